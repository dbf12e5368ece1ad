//! Who may call what. Every call but the health service's carries credentials: a bearer
//! token in the `authorization` metadata (`Bearer flash.<client>.<secret>`), or, with
//! mutual TLS, a client certificate whose subject is a client's. The layer authenticates
//! the client, takes one call from its token bucket, checks that it holds the scope the
//! method needs and hands the [`Caller`] to the handler, which checks the program with
//! [`admit`] (NOT_FOUND for a program outside the client's list, as for one that does not
//! exist) and scopes idempotency keys by the client.
use super::around::{Answer, Around, Inner};
use crate::domain::Scope;
use crate::service::{Caller, Clients, Credentials, Error};
use std::sync::Arc;
use tonic::{Request, Status};

/// What a method needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (the health service, for load balancers).
    Open,
    /// Any authenticated client (reflection: the contract is not a secret, but only
    /// clients need it).
    Client,
    /// A client holding one of these scopes.
    Scoped(&'static [Scope]),
}

/// The access rule of a gRPC method path (`/package.Service/Method`). A method of ours
/// missing here would need only authentication: the unit test below keeps every method of
/// the contract listed.
pub fn access(path: &str) -> Access {
    use Scope::*;
    const SERVICE: &str = "/flash.loyalty.v1.";
    if path.starts_with("/grpc.health.v1.Health/") {
        return Access::Open;
    }
    let Some(method) = path.strip_prefix(SERVICE) else {
        return Access::Client;
    };
    let scopes: &'static [Scope] = match method {
        "Ledger/Award" | "Ledger/AwardBatch" => &[Award],
        // Members are enrolled by the services that credit them.
        "Ledger/EnrollMember" | "Ledger/EnrollBatch" => &[Award, Referrals],
        "Ledger/Spend" | "Ledger/ReverseSpend" => &[Spend],
        "Ledger/ReverseAward" => &[Refund],
        "Ledger/Adjust" | "Tiers/SetTier" => &[Adjust],
        "Referrals/CreateInvites"
        | "Referrals/AcceptInvite"
        | "Referrals/ConvertInvite"
        | "Referrals/RevokeInvite" => &[Referrals],
        "Ledger/GetMember"
        | "Ledger/ListEntries"
        | "Ledger/GetLiability"
        | "Events/Subscribe"
        | "Tiers/GetTierStatus"
        | "Tiers/ListTierHistory"
        | "Referrals/ListInvites"
        | "Referrals/GetReferralStats"
        | "Graph/GetGraph"
        | "Graph/GetNeighborhood"
        | "Graph/ListTopAdvocates"
        | "Programs/GetProgram" => &[Read],
        "Programs/CreateProgram"
        | "Programs/UpdateProgram"
        | "Tiers/EvaluateMember"
        | "Graph/RebuildSnapshot" => &[Admin],
        _ => return Access::Client,
    };
    Access::Scoped(scopes)
}

/// Authenticates every call.
#[derive(Clone)]
pub struct Authenticate {
    clients: Clients,
}

impl Authenticate {
    pub fn new(clients: Clients) -> Self {
        Self { clients }
    }
}

impl<B: Send + 'static> Around<B, tonic::body::Body> for Authenticate {
    fn around<S: Inner<B, tonic::body::Body>>(
        &self,
        mut request: http::Request<B>,
        mut inner: S,
    ) -> Answer<tonic::body::Body, S::Error> {
        let rule = access(request.uri().path());
        if rule == Access::Open {
            return Box::pin(inner.call(request));
        }
        let clients = self.clients.clone();
        let credentials = credentials(&request);
        Box::pin(async move {
            match authorize(&clients, credentials, rule).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(error) => Ok(Status::from(error).into_http()),
            }
        })
    }
}

/// The caller of a request, when it may make it.
async fn authorize(
    clients: &Clients,
    credentials: Credentials,
    rule: Access,
) -> Result<Arc<Caller>, Error> {
    let scopes = match rule {
        Access::Scoped(scopes) => Some(scopes),
        Access::Client | Access::Open => None,
    };
    clients.admit(credentials, scopes).await
}

/// What a gRPC request presents: its `authorization` metadata, and with mutual TLS the
/// verified client certificate's subject.
fn credentials<B>(request: &http::Request<B>) -> Credentials {
    Credentials {
        authorization: request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|value| value.as_bytes().to_vec()),
        cert_subject: super::tls::peer_subject(request),
    }
}

/// A request message of `flash.loyalty.v1`: each names its program.
pub trait ForProgram {
    fn program_id(&self) -> &str;
}

macro_rules! for_program {
    ($($request:ident),* $(,)?) => {
        $(impl ForProgram for super::proto::$request {
            fn program_id(&self) -> &str {
                &self.program_id
            }
        })*
    };
}

for_program!(
    EnrollMemberRequest,
    EnrollBatchRequest,
    GetMemberRequest,
    AwardRequest,
    AwardBatchRequest,
    SpendRequest,
    ReverseAwardRequest,
    ReverseSpendRequest,
    AdjustRequest,
    ListEntriesRequest,
    GetLiabilityRequest,
    CreateProgramRequest,
    GetProgramRequest,
    UpdateProgramRequest,
    GetTierStatusRequest,
    ListTierHistoryRequest,
    EvaluateMemberRequest,
    SetTierRequest,
    SubscribeRequest,
    CreateInvitesRequest,
    AcceptInviteRequest,
    ConvertInviteRequest,
    RevokeInviteRequest,
    ListInvitesRequest,
    GetReferralStatsRequest,
    GetGraphRequest,
    GetNeighborhoodRequest,
    ListTopAdvocatesRequest,
    RebuildSnapshotRequest,
);

/// The caller and the message of a request, when the caller may touch its program: the
/// first step of every handler. UNAUTHENTICATED when no caller came through the layer
/// (never, when the layer is in place: it fails closed).
pub fn admit<T: ForProgram>(request: Request<T>) -> Result<(Arc<Caller>, T), Status> {
    let caller = request
        .extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or_else(|| Status::from(Error::Unauthenticated("no authenticated caller".into())))?;
    let message = request.into_inner();
    caller.may_use(message.program_id())?;
    Ok((caller, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every method of the contract has its scope: a new RPC cannot be served without one.
    #[test]
    fn every_method_of_the_contract_needs_a_scope() {
        let set = prost_types::FileDescriptorSet::decode(super::super::proto::FILE_DESCRIPTOR_SET)
            .unwrap();
        let mut methods = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert!(
                        matches!(access(&path), Access::Scoped(_)),
                        "{path} has no scope"
                    );
                    methods += 1;
                }
            }
        }
        assert_eq!(methods, 29);
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(access("/grpc.health.v1.Health/Watch"), Access::Open);
        assert_eq!(
            access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Access::Client
        );
    }
}
