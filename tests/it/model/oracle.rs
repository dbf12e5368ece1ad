//! The oracle: an in-memory model of the ledger's rules — batches, FIFO draws, the daily
//! cap under every zone in force, refunds and cancellations, expiry, status points over
//! the rolling window, upgrades, the grace ladder and the re-upgrade bonus — written from
//! the rules as the README states them. It never imports the service's domain code
//! (`flash_loyalty::domain`, `service`, `store`): only the wire types it compares against.
//! Its independence is what makes it worth having; a rule copied from the service would
//! share the service's bugs.
use super::*;

#[derive(Debug, Clone)]
pub(super) struct Batch {
    pub(super) member: usize,
    pub(super) earned_at: DateTime<Utc>,
    pub(super) expires_at: DateTime<Utc>,
    pub(super) remaining: i64,
}

#[derive(Debug, Clone)]
pub(super) enum Entry {
    Award {
        member: usize,
        at: DateTime<Utc>,
        points: i64,
        batch: Option<usize>,
        reversed: i64,
    },
    Spend {
        member: usize,
        points: i64,
        /// (batch, points) in the order drawn.
        draws: Vec<(usize, i64)>,
        reversed: i64,
    },
    Other,
}

/// What the service must answer. Draws name model batches by their creation index.
#[derive(Debug, Clone)]
pub(super) enum Expected {
    Replay(Response),
    Error(Code),
    Award {
        requested: i64,
        awarded: i64,
        balance: i64,
    },
    Spend {
        points: i64,
        draws: Vec<(usize, i64)>,
        balance: i64,
    },
    ReverseAward {
        member: usize,
        reversed: i64,
        draws: Vec<(usize, i64)>,
        remaining_reversible: i64,
        balance: i64,
    },
    ReverseSpend {
        member: usize,
        reversed: i64,
        restorations: Vec<(usize, i64)>,
        expired: i64,
        repaid: i64,
        balance: i64,
    },
    Adjust {
        points: i64,
        credited: Option<usize>,
        draws: Vec<(usize, i64)>,
        balance: i64,
    },
    SetTier {
        from: usize,
        to: usize,
        hold_until: Option<DateTime<Utc>>,
    },
    /// One invite sent, and the quotas left after it.
    Invited {
        remaining_today: i64,
        remaining_lifetime: i64,
    },
    /// An accepted or converted referral.
    InviteChange {
        status: proto::InviteStatus,
        referrer: usize,
        referee: usize,
    },
}

/// A referral the model made: its invite's code, its sides and where it stands.
#[derive(Debug, Clone)]
pub(super) struct Referral {
    pub(super) code: String,
    pub(super) referrer: usize,
    pub(super) referee: usize,
    pub(super) status: proto::InviteStatus,
    /// The key of the purchase award that converted it.
    pub(super) qualifying: Option<String>,
}

/// A member's place on the ladder.
#[derive(Debug, Clone, Default)]
pub(super) struct Standing {
    pub(super) rank: usize,
    /// The grace in progress: when it ends and the reminder days already sent.
    pub(super) grace: Option<(DateTime<Utc>, Vec<i32>)>,
    pub(super) hold_until: Option<DateTime<Utc>>,
    /// Demotions: (when, the rank left, whether its re-upgrade bonus was paid).
    pub(super) demotions: Vec<(DateTime<Utc>, usize, bool)>,
}

pub(super) struct Model {
    pub(super) now: DateTime<Utc>,
    pub(super) members: Vec<String>,
    /// Every batch ever credited, in creation order.
    pub(super) batches: Vec<Batch>,
    /// The service's id of each batch, learnt from its answers.
    pub(super) batch_ids: Vec<Option<String>>,
    pub(super) known_batch_ids: HashMap<String, usize>,
    /// Claimed keys: the request that claimed each and the service's original answer.
    pub(super) claimed: HashMap<String, (Request, Response)>,
    /// Entries written, by idempotency key; entry ids map to keys.
    pub(super) entries: HashMap<String, Entry>,
    pub(super) entry_keys: HashMap<String, String>,
    pub(super) purchases: HashSet<(i32, String)>,
    /// Every award that earned points: (member, when, points).
    pub(super) earned: Vec<(usize, DateTime<Utc>, i64)>,
    /// The program's zones: (in force from, zone), oldest first.
    pub(super) zones: Vec<(DateTime<Utc>, chrono_tz::Tz)>,
    pub(super) lifetime_earned: Vec<i64>,
    /// Points of refunded awards the member had already spent: repaid by cancellations.
    pub(super) owed: Vec<i64>,
    /// Keys of the awards and spends written, in order.
    pub(super) awards: Vec<String>,
    pub(super) spends: Vec<String>,
    /// What counts toward status: (member, instant, points). A refund counts at its
    /// award's instant, so both leave the window together.
    pub(super) status_points: Vec<(usize, DateTime<Utc>, i64)>,
    pub(super) standings: Vec<Standing>,
    /// Invites sent: (referrer, code once known, program-local day sent).
    pub(super) invites: Vec<(usize, Option<String>, NaiveDate)>,
    pub(super) referrals: Vec<Referral>,
}

impl Model {
    pub(super) fn new(members: Vec<String>, now: DateTime<Utc>) -> Model {
        let count = members.len();
        Model {
            now,
            members,
            batches: vec![],
            batch_ids: vec![],
            known_batch_ids: HashMap::new(),
            claimed: HashMap::new(),
            entries: HashMap::new(),
            entry_keys: HashMap::new(),
            purchases: HashSet::new(),
            earned: vec![],
            zones: vec![(now, zone(ZONES[0]))],
            lifetime_earned: vec![0; count],
            owed: vec![0; count],
            awards: vec![],
            spends: vec![],
            status_points: vec![],
            standings: vec![Standing::default(); count],
            invites: vec![],
            referrals: vec![],
        }
    }

    /// A member enrolled during the case (a referee).
    pub(super) fn add_member(&mut self, member_id: String) -> usize {
        self.members.push(member_id);
        self.lifetime_earned.push(0);
        self.owed.push(0);
        self.standings.push(Standing::default());
        self.members.len() - 1
    }

    /// The program's zone now.
    fn zone_now(&self) -> chrono_tz::Tz {
        self.zones
            .iter()
            .rev()
            .find(|(effective, _)| *effective <= self.now)
            .map_or(zone(ZONES[0]), |(_, zone)| *zone)
    }

    /// The referral a member accepted, if any.
    fn referral_of(&self, member: usize) -> Option<usize> {
        self.referrals.iter().position(|r| r.referee == member)
    }

    /// Pays both sides of an accepted referral (referee first, then referrer; each a
    /// credit counted toward status, kept as a reversible credit under its own name), then
    /// lifts both.
    fn convert(&mut self, referral: usize, qualifying: Option<String>) {
        let (referrer, referee) = (
            self.referrals[referral].referrer,
            self.referrals[referral].referee,
        );
        for (member, side, points) in [
            (referee, "referee", REFEREE_POINTS),
            (referrer, "referrer", REFERRER_POINTS),
        ] {
            let batch = self.credit(member, points);
            self.lifetime_earned[member] += points;
            self.status_points.push((member, self.now, points));
            self.entries.insert(
                format!("referral-{referral}-{side}"),
                Entry::Award {
                    member,
                    at: self.now,
                    points,
                    batch: Some(batch),
                    reversed: 0,
                },
            );
        }
        self.lift(referee);
        self.lift(referrer);
        self.referrals[referral].status = proto::InviteStatus::Converted;
        self.referrals[referral].qualifying = qualifying;
    }

    /// Takes `points` of a credit back: from its own batch first, then the member's other
    /// batches oldest first; what was spent already is owed. Returns (member, draws).
    fn reverse_credit(&mut self, credit_key: &str, points: i64) -> (usize, Vec<(usize, i64)>) {
        let Some(Entry::Award {
            member, at, batch, ..
        }) = self.entries.get(credit_key).cloned()
        else {
            panic!("no credit {credit_key}");
        };
        let mut draws = vec![];
        let mut left = points;
        if let Some(own) = batch {
            if self.live(&self.batches[own]) {
                let taken = left.min(self.batches[own].remaining);
                self.batches[own].remaining -= taken;
                left -= taken;
                draws.push((own, taken));
            }
        }
        draws.extend(self.draw_fifo(member, left, batch));
        let recovered: i64 = draws.iter().map(|d| d.1).sum();
        self.owed[member] += points - recovered;
        self.lifetime_earned[member] -= points;
        self.status_points.push((member, at, -points));
        if let Some(Entry::Award { reversed, .. }) = self.entries.get_mut(credit_key) {
            *reversed += points;
        }
        (member, draws)
    }

    /// A full refund of a referral's qualifying purchase within the clawback days takes
    /// both credits back (the referrer's first).
    fn claw_back(&mut self, award_key: &str, award_at: DateTime<Utc>) {
        let Some(referral) = self.referrals.iter().position(|r| {
            r.qualifying.as_deref() == Some(award_key) && r.status == proto::InviteStatus::Converted
        }) else {
            return;
        };
        if self.now > award_at + Duration::days(REFERRAL_CLAWBACK_DAYS) {
            return;
        }
        for side in ["referrer", "referee"] {
            let key = format!("referral-{referral}-{side}");
            if let Some(Entry::Award {
                points, reversed, ..
            }) = self.entries.get(&key).cloned()
            {
                self.reverse_credit(&key, points - reversed);
            }
        }
        self.referrals[referral].status = proto::InviteStatus::ClawedBack;
    }

    /// Points earned in the window (now − one calendar month, now].
    pub(super) fn status(&self, member: usize) -> i64 {
        let start = self.now - chrono::Months::new(TIER_WINDOW_MONTHS);
        self.status_points
            .iter()
            .filter(|(m, at, _)| *m == member && *at > start && *at <= self.now)
            .map(|(_, _, points)| points)
            .sum()
    }

    /// The highest rank whose qualify points the member's status reaches.
    fn qualifying(&self, member: usize) -> usize {
        let status = self.status(member);
        TIERS.iter().rposition(|tier| status >= tier.1).unwrap_or(0)
    }

    /// Raises the member to the tier its status qualifies for, when higher, ending any
    /// grace; pays the re-upgrade bonus of each demotion (newest first) from a rank now
    /// regained within the window, once per demotion. Says whether it rose.
    pub(super) fn lift(&mut self, member: usize) -> bool {
        let to = self.qualifying(member);
        let from = self.standings[member].rank;
        if to <= from {
            return false;
        }
        let since = self.now - Duration::days(REUPGRADE_WINDOW_DAYS);
        let standing = &mut self.standings[member];
        standing.rank = to;
        standing.grace = None;
        let mut bonuses = 0;
        for (at, left, paid) in standing.demotions.iter_mut().rev() {
            if *at >= since && *left > from && *left <= to && !*paid {
                *paid = true;
                bonuses += 1;
            }
        }
        for _ in 0..bonuses {
            self.credit(member, REUPGRADE_BONUS_POINTS);
            self.lifetime_earned[member] += REUPGRADE_BONUS_POINTS;
        }
        true
    }

    /// EvaluateMember: an upgrade; otherwise, without a hold in force, the grace ladder —
    /// start, remind (one warning for all reminders passed), clear, or one rank down (and
    /// a fresh grace when still below).
    pub(super) fn evaluate(&mut self, member: usize) -> Vec<proto::TierStepKind> {
        use proto::TierStepKind as Kind;
        if self.lift(member) {
            return vec![Kind::Upgraded];
        }
        let now = self.now;
        let status = self.status(member);
        let standing = &mut self.standings[member];
        if standing.hold_until.is_some_and(|hold| hold > now) {
            return vec![];
        }
        let below = |rank: usize| rank > 0 && status < TIERS[rank].2;
        let new_grace = || Some((now + Duration::days(GRACE_DAYS), vec![]));
        let Some((ends_at, sent)) = standing.grace.clone() else {
            if below(standing.rank) {
                standing.grace = new_grace();
                return vec![Kind::GraceStarted];
            }
            return vec![];
        };
        if !below(standing.rank) {
            standing.grace = None;
            return vec![Kind::GraceCleared];
        }
        if now >= ends_at {
            standing.demotions.push((now, standing.rank, false));
            standing.rank -= 1;
            standing.grace = None;
            if below(standing.rank) {
                standing.grace = new_grace();
                return vec![Kind::Downgraded, Kind::GraceStarted];
            }
            return vec![Kind::Downgraded];
        }
        let due: Vec<i32> = GRACE_REMINDER_DAYS
            .iter()
            .copied()
            .filter(|days| {
                !sent.contains(days) && now >= ends_at - Duration::days(i64::from(*days))
            })
            .collect();
        if due.is_empty() {
            return vec![];
        }
        standing.grace = Some((ends_at, [sent, due].concat()));
        vec![Kind::Reminded]
    }

    pub(super) fn member_index(&self, member_id: &str) -> usize {
        self.members
            .iter()
            .position(|m| m == member_id)
            .expect("a member of the case")
    }

    pub(super) fn live(&self, batch: &Batch) -> bool {
        batch.remaining > 0 && batch.expires_at > self.now
    }

    pub(super) fn balance(&self, member: usize) -> i64 {
        self.batches
            .iter()
            .filter(|b| b.member == member && self.live(b))
            .map(|b| b.remaining)
            .sum()
    }

    /// (next expiry, points expiring then) of a member's live batches.
    pub(super) fn next_expiry(&self, member: usize) -> Option<(DateTime<Utc>, i64)> {
        let live: Vec<&Batch> = self
            .batches
            .iter()
            .filter(|b| b.member == member && self.live(b))
            .collect();
        let next = live.iter().map(|b| b.expires_at).min()?;
        let points = live
            .iter()
            .filter(|b| b.expires_at == next)
            .map(|b| b.remaining)
            .sum();
        Some((next, points))
    }

    pub(super) fn credit(&mut self, member: usize, points: i64) -> usize {
        self.batches.push(Batch {
            member,
            earned_at: self.now,
            expires_at: self.now + Duration::days(VALIDITY_DAYS),
            remaining: points,
        });
        self.batch_ids.push(None);
        self.batches.len() - 1
    }

    /// Takes `points` from the member's live batches, oldest earned first, ties broken by
    /// creation order, skipping `except`. Returns the draws; they may fall short.
    pub(super) fn draw_fifo(
        &mut self,
        member: usize,
        points: i64,
        except: Option<usize>,
    ) -> Vec<(usize, i64)> {
        let mut order: Vec<usize> = (0..self.batches.len())
            .filter(|&i| {
                Some(i) != except && self.batches[i].member == member && self.live(&self.batches[i])
            })
            .collect();
        order.sort_by_key(|&i| (self.batches[i].earned_at, i));
        let mut left = points;
        let mut draws = vec![];
        for i in order {
            if left == 0 {
                break;
            }
            let taken = left.min(self.batches[i].remaining);
            self.batches[i].remaining -= taken;
            left -= taken;
            draws.push((i, taken));
        }
        draws
    }

    pub(super) fn resolve(&self, reference: &Option<proto::EntryRef>) -> Option<(String, Entry)> {
        let key = match reference.as_ref()?.r#ref.as_ref()? {
            proto::entry_ref::Ref::IdempotencyKey(key) => key.clone(),
            proto::entry_ref::Ref::EntryId(id) => self.entry_keys.get(id)?.clone(),
        };
        let entry = self.entries.get(&key)?.clone();
        Some((key, entry))
    }

    /// The member a request is about, when the model knows it.
    pub(super) fn involved(&self, request: &Request) -> Option<usize> {
        match request {
            Request::Award(r) => Some(self.member_index(&r.member_id)),
            Request::Spend(r) => Some(self.member_index(&r.member_id)),
            Request::Adjust(r) => Some(self.member_index(&r.member_id)),
            Request::SetTier(r) => Some(self.member_index(&r.member_id)),
            Request::CreateInvites(r) => Some(self.member_index(&r.referrer_member_id)),
            Request::AcceptInvite(r) => Some(self.member_index(&r.referee_member_id)),
            Request::ConvertInvite(r) => self
                .referrals
                .iter()
                .find(|referral| referral.code == r.code)
                .map(|referral| referral.referee),
            Request::ReverseAward(r) => match self.resolve(&r.award)?.1 {
                Entry::Award { member, .. } => Some(member),
                _ => None,
            },
            Request::ReverseSpend(r) => match self.resolve(&r.spend)?.1 {
                Entry::Spend { member, .. } => Some(member),
                _ => None,
            },
        }
    }

    /// Applies a request to the model and says what the service must answer: the checks
    /// every request gets at the edge and against its key, then one function per operation.
    pub(super) fn apply(&mut self, request: &Request) -> Expected {
        // Fields past the API's limits are refused at the edge, before any key is looked at.
        let out_of_range = match request {
            Request::Award(r) => r.amount_minor > MAX_AMOUNT_MINOR,
            Request::Adjust(r) => r.points.abs() > MAX_ADJUST_POINTS,
            Request::Spend(r) => r.points > MAX_ADJUST_POINTS,
            _ => false,
        };
        if out_of_range {
            return Expected::Error(Code::InvalidArgument);
        }
        if let Some((original, response)) = self.claimed.get(request.key()) {
            return if original == request {
                Expected::Replay(response.clone())
            } else {
                Expected::Error(Code::AlreadyExists)
            };
        }
        let key = request.key().to_owned();
        match request {
            Request::Award(r) => self.apply_award(key, r),
            Request::Spend(r) => self.apply_spend(key, r),
            Request::Adjust(r) => self.apply_adjust(key, r),
            Request::ReverseAward(r) => self.apply_reverse_award(key, r),
            Request::ReverseSpend(r) => self.apply_reverse_spend(key, r),
            Request::SetTier(r) => self.apply_set_tier(key, r),
            Request::CreateInvites(r) => self.apply_create_invites(key, r),
            Request::AcceptInvite(r) => self.apply_accept(key, r),
            Request::ConvertInvite(r) => self.apply_convert(key, r),
        }
    }

    pub(super) fn apply_award(&mut self, key: String, r: &proto::AwardRequest) -> Expected {
        let member = self.member_index(&r.member_id);
        if !self.purchases.insert((r.source, r.external_ref.clone())) {
            return Expected::Error(Code::AlreadyExists);
        }
        let requested = if r.amount_minor < MIN_AMOUNT_MINOR {
            0
        } else {
            // floor(amount × rate_bp × multiplier_bp / (10^exponent × 10^8)), at the tier
            // held before this award.
            let multiplier = TIERS[self.standings[member].rank].3;
            let points =
                i128::from(r.amount_minor) * i128::from(BASE_RATE_BP) * i128::from(multiplier)
                    / 10_000_000_000;
            i64::try_from(points).unwrap()
        };
        let awarded = if requested > 0 {
            let granted = requested.min(self.cap_room(member));
            self.earned.push((member, self.now, granted));
            granted
        } else {
            0
        };
        let balance = self.balance(member) + awarded;
        let batch = (awarded > 0).then(|| self.credit(member, awarded));
        self.lifetime_earned[member] += awarded;
        if awarded > 0 {
            self.status_points.push((member, self.now, awarded));
        }
        self.lift(member);
        if r.amount_minor >= REFERRAL_MIN_AMOUNT_MINOR {
            if let Some(referral) = self.referral_of(member) {
                if self.referrals[referral].status == proto::InviteStatus::Accepted {
                    self.convert(referral, Some(key.clone()));
                }
            }
        }
        self.entries.insert(
            key.clone(),
            Entry::Award {
                member,
                at: self.now,
                points: awarded,
                batch,
                reversed: 0,
            },
        );
        self.awards.push(key);
        Expected::Award {
            requested,
            awarded,
            balance,
        }
    }

    pub(super) fn apply_spend(&mut self, key: String, r: &proto::SpendRequest) -> Expected {
        let member = self.member_index(&r.member_id);
        let available = self.balance(member);
        if available < r.points {
            return Expected::Error(Code::FailedPrecondition);
        }
        let draws = self.draw_fifo(member, r.points, None);
        self.entries.insert(
            key.clone(),
            Entry::Spend {
                member,
                points: r.points,
                draws: draws.clone(),
                reversed: 0,
            },
        );
        self.spends.push(key);
        Expected::Spend {
            points: r.points,
            draws,
            balance: available - r.points,
        }
    }

    pub(super) fn apply_adjust(&mut self, key: String, r: &proto::AdjustRequest) -> Expected {
        let member = self.member_index(&r.member_id);
        let available = self.balance(member);
        let (credited, draws) = if r.points > 0 {
            (Some(self.credit(member, r.points)), vec![])
        } else {
            if available < -r.points {
                return Expected::Error(Code::FailedPrecondition);
            }
            (None, self.draw_fifo(member, -r.points, None))
        };
        if r.counts_toward_tier {
            self.status_points.push((member, self.now, r.points));
            self.lift(member);
        }
        self.entries.insert(key, Entry::Other);
        Expected::Adjust {
            points: r.points,
            credited,
            draws,
            balance: available + r.points,
        }
    }

    pub(super) fn apply_reverse_award(
        &mut self,
        key: String,
        r: &proto::ReverseAwardRequest,
    ) -> Expected {
        let Some((award_key, entry)) = self.resolve(&r.award) else {
            return Expected::Error(Code::NotFound);
        };
        let Entry::Award {
            member,
            at,
            points: awarded,
            batch: _,
            reversed,
        } = entry
        else {
            return Expected::Error(Code::InvalidArgument);
        };
        let reversible = awarded - reversed;
        if reversible <= 0 {
            return Expected::Error(Code::FailedPrecondition);
        }
        let points = r.points.unwrap_or(reversible);
        if points > reversible {
            return Expected::Error(Code::FailedPrecondition);
        }
        // What was spent already cannot be taken back: the member owes it.
        let (_, draws) = self.reverse_credit(&award_key, points);
        let balance = self.balance(member);
        if reversible == points {
            self.claw_back(&award_key, at);
        }
        self.entries.insert(key, Entry::Other);
        Expected::ReverseAward {
            member,
            reversed: points,
            draws,
            remaining_reversible: reversible - points,
            balance,
        }
    }

    pub(super) fn apply_set_tier(&mut self, key: String, r: &proto::SetTierRequest) -> Expected {
        let member = self.member_index(&r.member_id);
        let Some(to) = TIERS.iter().position(|tier| tier.0 == r.tier_code) else {
            return Expected::Error(Code::InvalidArgument);
        };
        let hold_until = r.hold_until.as_ref().map(|at| {
            DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).unwrap()).unwrap()
        });
        if hold_until.is_some_and(|hold| hold <= self.now) {
            return Expected::Error(Code::InvalidArgument);
        }
        let standing = &mut self.standings[member];
        let from = standing.rank;
        standing.rank = to;
        standing.grace = None;
        standing.hold_until = hold_until;
        self.entries.insert(key, Entry::Other);
        Expected::SetTier {
            from,
            to,
            hold_until,
        }
    }

    pub(super) fn apply_create_invites(
        &mut self,
        key: String,
        r: &proto::CreateInvitesRequest,
    ) -> Expected {
        let referrer = self.member_index(&r.referrer_member_id);
        let today = local_day(self.now, self.zone_now()).0;
        self.invites.push((referrer, None, today));
        let sent_today = self
            .invites
            .iter()
            .filter(|(m, _, day)| *m == referrer && *day == today)
            .count() as i64;
        let held = self
            .invites
            .iter()
            .filter(|(m, _, _)| *m == referrer)
            .count() as i64;
        self.entries.insert(key, Entry::Other);
        Expected::Invited {
            remaining_today: INVITES_PER_DAY - sent_today,
            remaining_lifetime: INVITES_LIFETIME - held,
        }
    }

    pub(super) fn apply_accept(&mut self, key: String, r: &proto::AcceptInviteRequest) -> Expected {
        let Some(&(referrer, _, _)) = self
            .invites
            .iter()
            .find(|(_, code, _)| code.as_deref() == Some(r.code.as_str()))
        else {
            return Expected::Error(Code::NotFound);
        };
        let referee = self.member_index(&r.referee_member_id);
        self.referrals.push(Referral {
            code: r.code.clone(),
            referrer,
            referee,
            status: proto::InviteStatus::Accepted,
            qualifying: None,
        });
        self.entries.insert(key, Entry::Other);
        Expected::InviteChange {
            status: proto::InviteStatus::Accepted,
            referrer,
            referee,
        }
    }

    pub(super) fn apply_convert(
        &mut self,
        key: String,
        r: &proto::ConvertInviteRequest,
    ) -> Expected {
        let Some(referral) = self.referrals.iter().position(|x| x.code == r.code) else {
            return Expected::Error(Code::NotFound);
        };
        if self.referrals[referral].status != proto::InviteStatus::Accepted {
            return Expected::Error(Code::FailedPrecondition);
        }
        self.convert(referral, None);
        self.entries.insert(key, Entry::Other);
        let found = &self.referrals[referral];
        Expected::InviteChange {
            status: proto::InviteStatus::Converted,
            referrer: found.referrer,
            referee: found.referee,
        }
    }

    pub(super) fn apply_reverse_spend(
        &mut self,
        key: String,
        r: &proto::ReverseSpendRequest,
    ) -> Expected {
        let Some((spend_key, entry)) = self.resolve(&r.spend) else {
            return Expected::Error(Code::NotFound);
        };
        let Entry::Spend {
            member,
            points: spent,
            draws,
            reversed,
        } = entry
        else {
            return Expected::Error(Code::InvalidArgument);
        };
        let left = spent - reversed;
        if left <= 0 {
            return Expected::Error(Code::FailedPrecondition);
        }
        let points = r.points.unwrap_or(left);
        if points > left {
            return Expected::Error(Code::FailedPrecondition);
        }
        // Earlier reversals covered the spend's first `reversed` points, in the
        // order they were drawn; this one covers the next `points`.
        let (mut skip, mut cover) = (reversed, points);
        let mut restorations = vec![];
        let (mut expired, mut repaid) = (0, 0);
        for (batch, drawn) in draws {
            let skipped = skip.min(drawn);
            skip -= skipped;
            let part = (drawn - skipped).min(cover);
            if part == 0 {
                continue;
            }
            cover -= part;
            if self.batches[batch].expires_at <= self.now {
                expired += part;
                continue;
            }
            // Owed points are repaid first, from the first parts put back.
            let repay = part.min(self.owed[member]);
            self.owed[member] -= repay;
            repaid += repay;
            if part > repay {
                self.batches[batch].remaining += part - repay;
                restorations.push((batch, part - repay));
            }
        }
        if let Some(Entry::Spend { reversed, .. }) = self.entries.get_mut(&spend_key) {
            *reversed += points;
        }
        self.entries.insert(key, Entry::Other);
        Expected::ReverseSpend {
            member,
            reversed: points,
            restorations,
            expired,
            repaid,
            balance: self.balance(member),
        }
    }

    pub(super) fn cap_room(&self, member: usize) -> i64 {
        let from = self.now - Duration::hours(CAP_ZONE_LOOKBACK_HOURS);
        let mut room = DAILY_CAP_POINTS;
        for (index, (effective, zone)) in self.zones.iter().enumerate() {
            let until = self.zones.get(index + 1).map(|(next, _)| *next);
            if *effective > self.now || until.is_some_and(|until| until <= from) {
                continue;
            }
            let (_, start) = local_day(self.now, *zone);
            let used: i64 = self
                .earned
                .iter()
                .filter(|(m, at, _)| *m == member && *at >= start && *at <= self.now)
                .map(|(_, _, points)| points)
                .sum();
            room = room.min(DAILY_CAP_POINTS - used);
        }
        room.max(0)
    }

    /// The sweep: every batch due by now loses its points. Returns the points expired.
    pub(super) fn expire(&mut self) -> i64 {
        let now = self.now;
        let mut expired = 0;
        for batch in &mut self.batches {
            if batch.remaining > 0 && batch.expires_at <= now {
                expired += batch.remaining;
                batch.remaining = 0;
            }
        }
        expired
    }

    /// Records (or checks) which service batch a model batch is.
    pub(super) fn same_batch(
        &mut self,
        service_id: &str,
        batch: usize,
    ) -> Result<(), TestCaseError> {
        match &self.batch_ids[batch] {
            Some(known) => prop_assert_eq!(known, service_id, "batch #{} has another id", batch),
            None => {
                let other = self.known_batch_ids.get(service_id);
                prop_assert!(
                    other.is_none(),
                    "batch {} is both #{} and #{}",
                    service_id,
                    other.unwrap(),
                    batch
                );
                self.batch_ids[batch] = Some(service_id.to_owned());
                self.known_batch_ids.insert(service_id.to_owned(), batch);
            }
        }
        Ok(())
    }

    pub(super) fn check_allocations(
        &mut self,
        what: &str,
        actual: &[proto::Allocation],
        expected: &[(usize, i64)],
    ) -> Result<(), TestCaseError> {
        let points: Vec<i64> = actual.iter().map(|a| a.points).collect();
        let want: Vec<i64> = expected.iter().map(|d| d.1).collect();
        prop_assert_eq!(points, want, "{}: allocation points in order", what);
        for (allocation, &(batch, _)) in actual.iter().zip(expected) {
            self.same_batch(&allocation.batch_id, batch)?;
            let model = &self.batches[batch];
            prop_assert_eq!(
                allocation.earned_at,
                Some(timestamp(model.earned_at)),
                "{}: earned_at of batch #{}",
                what,
                batch
            );
            prop_assert_eq!(
                allocation.expires_at,
                Some(timestamp(model.expires_at)),
                "{}: expires_at of batch #{}",
                what,
                batch
            );
        }
        Ok(())
    }

    /// Checks the service's answer against the model's expectation, and learns from it.
    pub(super) fn check(
        &mut self,
        request: &Request,
        expected: Expected,
        actual: Result<Response, tonic::Status>,
    ) -> Result<(), TestCaseError> {
        let response = match (expected, actual) {
            (Expected::Error(code), Err(status)) => {
                prop_assert_eq!(status.code(), code, "{}", status.message());
                return Ok(());
            }
            (Expected::Error(code), Ok(response)) => {
                return Err(TestCaseError::fail(format!(
                    "expected {code:?}, the service answered {response:?}"
                )));
            }
            (expected, Err(status)) => {
                return Err(TestCaseError::fail(format!(
                    "expected {expected:?}, the service answered {:?}: {}",
                    status.code(),
                    status.message()
                )));
            }
            (Expected::Replay(original), Ok(response)) => {
                prop_assert!(response.replayed(), "a replay must say replayed");
                prop_assert_eq!(
                    response.with_replayed(false),
                    original,
                    "a replay answers the original"
                );
                return Ok(());
            }
            (expected, Ok(response)) => {
                prop_assert!(!response.replayed(), "a first request is not a replay");
                self.check_outcome(expected, &response)?;
                response
            }
        };
        self.entry_keys
            .insert(response.entry_id().to_owned(), request.key().to_owned());
        self.claimed
            .insert(request.key().to_owned(), (request.clone(), response));
        Ok(())
    }

    pub(super) fn check_outcome(
        &mut self,
        expected: Expected,
        response: &Response,
    ) -> Result<(), TestCaseError> {
        match (expected, response) {
            (
                Expected::Award {
                    requested,
                    awarded,
                    balance,
                },
                Response::Award(r),
            ) => {
                prop_assert_eq!(r.requested_points, requested, "award: requested points");
                prop_assert_eq!(r.awarded_points, awarded, "award: awarded points");
                prop_assert_eq!(r.capped, awarded < requested, "award: capped");
                prop_assert_eq!(r.balance_points, balance, "award: balance");
            }
            (
                Expected::Spend {
                    points,
                    draws,
                    balance,
                },
                Response::Spend(r),
            ) => {
                prop_assert_eq!(r.points, points, "spend: points");
                self.check_allocations("spend", &r.allocations, &draws)?;
                prop_assert_eq!(r.balance_points, balance, "spend: balance");
            }
            (
                Expected::ReverseAward {
                    member,
                    reversed,
                    draws,
                    remaining_reversible,
                    balance,
                },
                Response::ReverseAward(r),
            ) => {
                let recovered: i64 = draws.iter().map(|d| d.1).sum();
                prop_assert_eq!(&r.member_id, &self.members[member], "reverse award: member");
                prop_assert_eq!(r.reversed_points, reversed, "reverse award: reversed");
                prop_assert_eq!(r.recovered_points, recovered, "reverse award: recovered");
                prop_assert_eq!(
                    r.unrecovered_points,
                    reversed - recovered,
                    "reverse award: unrecovered"
                );
                self.check_allocations("reverse award", &r.allocations, &draws)?;
                prop_assert_eq!(
                    r.remaining_reversible_points,
                    remaining_reversible,
                    "reverse award: remaining reversible"
                );
                prop_assert_eq!(r.balance_points, balance, "reverse award: balance");
            }
            (
                Expected::ReverseSpend {
                    member,
                    reversed,
                    restorations,
                    expired,
                    repaid,
                    balance,
                },
                Response::ReverseSpend(r),
            ) => {
                prop_assert_eq!(r.repaid_points, repaid, "reverse spend: repaid");
                let restored: i64 = restorations.iter().map(|d| d.1).sum();
                prop_assert_eq!(&r.member_id, &self.members[member], "reverse spend: member");
                prop_assert_eq!(r.reversed_points, reversed, "reverse spend: reversed");
                prop_assert_eq!(r.restored_points, restored, "reverse spend: restored");
                prop_assert_eq!(r.expired_points, expired, "reverse spend: expired");
                self.check_allocations("reverse spend", &r.allocations, &restorations)?;
                prop_assert_eq!(r.balance_points, balance, "reverse spend: balance");
            }
            (
                Expected::Adjust {
                    points,
                    credited,
                    draws,
                    balance,
                },
                Response::Adjust(r),
            ) => {
                prop_assert_eq!(r.points, points, "adjust: points");
                match credited {
                    Some(batch) => self.same_batch(&r.batch_id, batch)?,
                    None => prop_assert_eq!(&r.batch_id, "", "adjust: a debit has no batch"),
                }
                self.check_allocations("adjust", &r.allocations, &draws)?;
                prop_assert_eq!(r.balance_points, balance, "adjust: balance");
            }
            (
                Expected::SetTier {
                    from,
                    to,
                    hold_until,
                },
                Response::SetTier(r),
            ) => {
                prop_assert_eq!(&r.from_tier_code, TIERS[from].0, "set tier: from");
                prop_assert_eq!(&r.tier_code, TIERS[to].0, "set tier: to");
                prop_assert_eq!(r.hold_until, hold_until.map(timestamp), "set tier: hold");
            }
            (
                Expected::Invited {
                    remaining_today,
                    remaining_lifetime,
                },
                Response::CreateInvites(r),
            ) => {
                prop_assert_eq!(r.results.len(), 1, "invites: one result");
                let invite = r.results[0].invite.as_ref();
                prop_assert!(invite.is_some(), "invites: an invite was sent");
                prop_assert_eq!(r.remaining_today, remaining_today, "invites: left today");
                prop_assert_eq!(
                    r.remaining_lifetime,
                    remaining_lifetime,
                    "invites: left in all"
                );
                if let Some(last) = self.invites.last_mut() {
                    last.1 = invite.map(|i| i.code.clone());
                }
            }
            (
                Expected::InviteChange {
                    status,
                    referrer,
                    referee,
                },
                Response::InviteChange(r),
            ) => {
                prop_assert_eq!(r.status, status as i32, "invite: status");
                prop_assert_eq!(
                    &r.referrer_member_id,
                    &self.members[referrer],
                    "invite: referrer"
                );
                prop_assert_eq!(
                    &r.referee_member_id,
                    &self.members[referee],
                    "invite: referee"
                );
                let paid = status == proto::InviteStatus::Converted;
                prop_assert_eq!(
                    !r.referrer_bonus_entry_id.is_empty(),
                    paid,
                    "invite: referrer paid"
                );
                prop_assert_eq!(
                    !r.referee_bonus_entry_id.is_empty(),
                    paid,
                    "invite: referee paid"
                );
            }
            (expected, response) => {
                return Err(TestCaseError::fail(format!(
                    "expected {expected:?}, the service answered {response:?}"
                )));
            }
        }
        Ok(())
    }
}
