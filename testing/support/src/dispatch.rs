//! One way to send an RPC of `flash.loyalty.v1`: the fuzzer sends any [`Call`], the model
//! its mutations, the chaos driver every request under a deadline — all through
//! [`Clients::send`], so a new RPC is added here once and every harness can send it.
use flash_loyalty::grpc::proto::{
    self, events_client::EventsClient, graph_client::GraphClient, ledger_client::LedgerClient,
    programs_client::ProgramsClient, referrals_client::ReferralsClient, tiers_client::TiersClient,
};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Status;

/// Sends a client's bearer token with every call (or nothing: a caller without credentials).
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// `authorization: Bearer <token>` on every call.
    pub fn new(token: &str) -> Bearer {
        Bearer(Some(
            format!("Bearer {token}")
                .parse()
                .expect("a token is ASCII metadata"),
        ))
    }

    /// No credentials at all.
    pub fn none() -> Bearer {
        Bearer(None)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry a client's token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// The clients of every unary service over one channel, calling as one client.
#[derive(Clone)]
pub struct Clients {
    pub ledger: LedgerClient<Authed>,
    pub programs: ProgramsClient<Authed>,
    pub tiers: TiersClient<Authed>,
    pub referrals: ReferralsClient<Authed>,
    pub graph: GraphClient<Authed>,
    /// The event stream (server streaming, so not a [`Call`]).
    pub events: EventsClient<Authed>,
}

impl Clients {
    pub fn new(channel: Channel, bearer: Bearer) -> Clients {
        Clients {
            ledger: LedgerClient::with_interceptor(channel.clone(), bearer.clone()),
            programs: ProgramsClient::with_interceptor(channel.clone(), bearer.clone()),
            tiers: TiersClient::with_interceptor(channel.clone(), bearer.clone()),
            referrals: ReferralsClient::with_interceptor(channel.clone(), bearer.clone()),
            graph: GraphClient::with_interceptor(channel.clone(), bearer.clone()),
            events: EventsClient::with_interceptor(channel, bearer),
        }
    }
}

/// A request type and the RPC that takes it.
pub trait Rpc: Clone + Into<Call> + Send + Sync + 'static {
    type Response: Send;
    /// The reply's own variant; `None` only for a reply to another RPC.
    fn response(reply: Reply) -> Option<Self::Response>;
}

macro_rules! rpcs {
    ($($variant:ident($request:ident => $response:ident) via $client:ident.$method:ident;)*) => {
        /// One request to one RPC.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Call {
            $($variant(proto::$request),)*
        }

        /// The answer to a [`Call`], in the call's own variant.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Reply {
            $($variant(proto::$response),)*
        }

        impl Call {
            /// The RPC's name, as the proto spells it.
            pub fn rpc(&self) -> &'static str {
                match self {
                    $(Call::$variant(_) => stringify!($variant),)*
                }
            }
        }

        $(
            impl From<proto::$request> for Call {
                fn from(request: proto::$request) -> Call {
                    Call::$variant(request)
                }
            }

            impl Rpc for proto::$request {
                type Response = proto::$response;
                fn response(reply: Reply) -> Option<proto::$response> {
                    match reply {
                        Reply::$variant(response) => Some(response),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            }
        )*

        impl Clients {
            /// Sends a call, with `deadline` as its gRPC timeout when given.
            pub async fn send(&mut self, call: Call, deadline: Option<Duration>) -> Result<Reply, Status> {
                Ok(match call {
                    $(Call::$variant(request) => Reply::$variant(
                        self.$client.$method(with_deadline(request, deadline)).await?.into_inner(),
                    ),)*
                })
            }
        }
    };
}

rpcs! {
    CreateProgram(CreateProgramRequest => CreateProgramResponse) via programs.create_program;
    GetProgram(GetProgramRequest => GetProgramResponse) via programs.get_program;
    UpdateProgram(UpdateProgramRequest => UpdateProgramResponse) via programs.update_program;
    EnrollMember(EnrollMemberRequest => EnrollMemberResponse) via ledger.enroll_member;
    GetMember(GetMemberRequest => GetMemberResponse) via ledger.get_member;
    Award(AwardRequest => AwardResponse) via ledger.award;
    AwardBatch(AwardBatchRequest => AwardBatchResponse) via ledger.award_batch;
    EnrollBatch(EnrollBatchRequest => EnrollBatchResponse) via ledger.enroll_batch;
    Spend(SpendRequest => SpendResponse) via ledger.spend;
    ReverseAward(ReverseAwardRequest => ReverseAwardResponse) via ledger.reverse_award;
    ReverseSpend(ReverseSpendRequest => ReverseSpendResponse) via ledger.reverse_spend;
    Adjust(AdjustRequest => AdjustResponse) via ledger.adjust;
    ListEntries(ListEntriesRequest => ListEntriesResponse) via ledger.list_entries;
    GetLiability(GetLiabilityRequest => GetLiabilityResponse) via ledger.get_liability;
    GetTierStatus(GetTierStatusRequest => GetTierStatusResponse) via tiers.get_tier_status;
    ListTierHistory(ListTierHistoryRequest => ListTierHistoryResponse) via tiers.list_tier_history;
    EvaluateMember(EvaluateMemberRequest => EvaluateMemberResponse) via tiers.evaluate_member;
    SetTier(SetTierRequest => SetTierResponse) via tiers.set_tier;
    CreateInvites(CreateInvitesRequest => CreateInvitesResponse) via referrals.create_invites;
    AcceptInvite(AcceptInviteRequest => AcceptInviteResponse) via referrals.accept_invite;
    ConvertInvite(ConvertInviteRequest => ConvertInviteResponse) via referrals.convert_invite;
    RevokeInvite(RevokeInviteRequest => RevokeInviteResponse) via referrals.revoke_invite;
    ListInvites(ListInvitesRequest => ListInvitesResponse) via referrals.list_invites;
    GetReferralStats(GetReferralStatsRequest => GetReferralStatsResponse) via referrals.get_referral_stats;
    GetGraph(GetGraphRequest => GetGraphResponse) via graph.get_graph;
    GetNeighborhood(GetNeighborhoodRequest => GetNeighborhoodResponse) via graph.get_neighborhood;
    ListTopAdvocates(ListTopAdvocatesRequest => ListTopAdvocatesResponse) via graph.list_top_advocates;
    RebuildSnapshot(RebuildSnapshotRequest => RebuildSnapshotResponse) via graph.rebuild_snapshot;
}

impl Clients {
    /// Sends one typed request and hands back its typed response.
    pub async fn rpc<R: Rpc>(
        &mut self,
        request: R,
        deadline: Option<Duration>,
    ) -> Result<R::Response, Status> {
        let reply = self.send(request.into(), deadline).await?;
        Ok(R::response(reply).expect("a reply in its call's own variant"))
    }
}

fn with_deadline<T>(message: T, deadline: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    request
}

/// One item's answer in a batch's response (`AwardBatch`, `EnrollBatch`): done, and whether
/// it was there already (a replayed award, a member already enrolled), or its error; None
/// for a result without an outcome (a malformed answer).
pub trait BatchItem {
    fn item(self) -> Option<Result<bool, proto::AwardBatchItemError>>;
}

impl BatchItem for proto::AwardBatchResult {
    fn item(self) -> Option<Result<bool, proto::AwardBatchItemError>> {
        Some(match self.outcome? {
            proto::award_batch_result::Outcome::Award(award) => Ok(award.replayed),
            proto::award_batch_result::Outcome::Error(error) => Err(error),
        })
    }
}

impl BatchItem for proto::EnrollBatchResult {
    fn item(self) -> Option<Result<bool, proto::AwardBatchItemError>> {
        Some(match self.outcome? {
            proto::enroll_batch_result::Outcome::Member(member) => Ok(member.already_enrolled),
            proto::enroll_batch_result::Outcome::Error(error) => Err(error),
        })
    }
}
