//! Contacts (as keyed hashes) and invites. Every invite transition is one conditional
//! UPDATE (`WHERE status = …`), so two writers can never both move the same invite; the
//! members' locks serialise what the service decides before it.
use super::events::{outbox_insert, NewEvent, OutboxRows};
use super::MemberTx;
use crate::domain::{ContactHash, ContactKind, InviteStatus, MemberId, ProgramId};
use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

fn hash_bytes(hashes: &[ContactHash]) -> Vec<&[u8]> {
    hashes.iter().map(|hash| hash.0.as_slice()).collect()
}

fn contact_hash(row: &Row, column: &str) -> Result<ContactHash, tokio_postgres::Error> {
    let bytes: Vec<u8> = row.try_get(column)?;
    let mut hash = [0u8; 32];
    if bytes.len() == 32 {
        hash.copy_from_slice(&bytes);
    }
    Ok(ContactHash(hash))
}

/// Records a member's contacts (hashes); one already recorded for the member is kept.
/// Returns how many of them belong to another member (then the caller rolls back).
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::add_contacts"))]
pub async fn add_contacts(
    client: &impl GenericClient,
    program: &ProgramId,
    member: MemberId,
    contacts: &[(ContactHash, ContactKind)],
    at: DateTime<Utc>,
) -> Result<i64, tokio_postgres::Error> {
    let hashes: Vec<ContactHash> = contacts.iter().map(|(hash, _)| *hash).collect();
    let kinds: Vec<&str> = contacts.iter().map(|(_, kind)| kind.as_str()).collect();
    let statement = client
        .prepare_cached(
            "WITH added AS ( \
               INSERT INTO member_contacts (program_id, contact_hash, member_id, contact_kind, \
                 created_at) \
               SELECT $1, h, $2, k, $5 FROM unnest($3::bytea[], $4::text[]) AS c(h, k) \
               ON CONFLICT (program_id, contact_hash) DO NOTHING RETURNING contact_hash) \
             SELECT count(*) FROM member_contacts \
             WHERE program_id = $1 AND contact_hash = ANY($3::bytea[]) AND member_id <> $2",
        )
        .await?;
    let row = client
        .query_one(
            &statement,
            &[
                &program.as_str(),
                &member.as_uuid(),
                &hash_bytes(&hashes),
                &kinds,
                &at,
            ],
        )
        .await?;
    row.try_get(0)
}

/// The members holding any of the hashes.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::contact_owners"))]
pub async fn contact_owners(
    client: &impl GenericClient,
    program: &ProgramId,
    hashes: &[ContactHash],
) -> Result<Vec<(ContactHash, MemberId)>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT contact_hash, member_id FROM member_contacts \
             WHERE program_id = $1 AND contact_hash = ANY($2::bytea[])",
        )
        .await?;
    let rows = client
        .query(&statement, &[&program.as_str(), &hash_bytes(hashes)])
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                contact_hash(row, "contact_hash")?,
                MemberId::from_uuid(row.try_get("member_id")?),
            ))
        })
        .collect()
}

/// Which of the hashes the referrer has a pending invite to.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::pending_from"))]
pub async fn pending_from(
    client: &impl GenericClient,
    program: &ProgramId,
    referrer: MemberId,
    hashes: &[ContactHash],
) -> Result<Vec<ContactHash>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT contact_hash FROM invites WHERE program_id = $1 \
               AND contact_hash = ANY($3::bytea[]) AND status = 'pending' \
               AND referrer_member_id = $2",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[&program.as_str(), &referrer.as_uuid(), &hash_bytes(hashes)],
        )
        .await?;
    rows.iter()
        .map(|row| contact_hash(row, "contact_hash"))
        .collect()
}

/// What a referrer's quotas have used: invites sent on the local day, and invites sent
/// that did not expire (expired ones are given back to the lifetime quota).
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::quota_used"))]
pub async fn quota_used(
    client: &impl GenericClient,
    program: &ProgramId,
    referrer: MemberId,
    day: NaiveDate,
) -> Result<(i64, i64), tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE sent_day = $3), \
                    count(*) FILTER (WHERE status <> 'expired') \
             FROM invites WHERE program_id = $1 AND referrer_member_id = $2",
        )
        .await?;
    let row = client
        .query_one(&statement, &[&program.as_str(), &referrer.as_uuid(), &day])
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// An invite to write.
#[derive(Debug, Clone)]
pub struct NewInvite {
    pub invite_id: Uuid,
    pub code: String,
    pub contact_hash: ContactHash,
    pub contact_kind: ContactKind,
    pub expires_at: DateTime<Utc>,
}

/// Writes a referrer's new invites (one statement).
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::insert"))]
pub async fn insert(
    tx: &MemberTx<'_>,
    referrer: MemberId,
    sent_entry: Uuid,
    at: DateTime<Utc>,
    day: NaiveDate,
    invites: &[NewInvite],
) -> Result<(), tokio_postgres::Error> {
    let ids: Vec<Uuid> = invites.iter().map(|i| i.invite_id).collect();
    let codes: Vec<&str> = invites.iter().map(|i| i.code.as_str()).collect();
    let hashes: Vec<ContactHash> = invites.iter().map(|i| i.contact_hash).collect();
    let kinds: Vec<&str> = invites.iter().map(|i| i.contact_kind.as_str()).collect();
    let expiries: Vec<DateTime<Utc>> = invites.iter().map(|i| i.expires_at).collect();
    let statement = tx
        .prepared(
            "INSERT INTO invites (program_id, invite_id, code, referrer_member_id, contact_hash, \
               contact_kind, status, sent_entry_id, sent_at, sent_day, expires_at) \
             SELECT $1, i, c, $2, h, k, 'pending', $3, $4, $5, e \
             FROM unnest($6::uuid[], $7::text[], $8::bytea[], $9::text[], $10::timestamptz[]) \
               AS n(i, c, h, k, e)",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &tx.program().as_str(),
            &referrer.as_uuid(),
            &sent_entry,
            &at,
            &day,
            &ids,
            &codes,
            &hash_bytes(&hashes),
            &kinds,
            &expiries,
        ],
    )
    .await?;
    Ok(())
}

/// An invite as stored.
#[derive(Debug, Clone)]
pub struct StoredInvite {
    pub invite_id: Uuid,
    pub code: String,
    pub referrer: MemberId,
    pub contact_hash: ContactHash,
    pub status: InviteStatus,
    pub sent_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub referee: Option<MemberId>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub converted_at: Option<DateTime<Utc>>,
    pub qualifying_entry_id: Option<Uuid>,
    pub referrer_entry_id: Option<Uuid>,
    pub referee_entry_id: Option<Uuid>,
    pub clawed_back_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
}

const INVITE_COLUMNS: &str = "invite_id, code, referrer_member_id, contact_hash, status, \
     sent_at, expires_at, referee_member_id, accepted_at, converted_at, qualifying_entry_id, \
     referrer_entry_id, referee_entry_id, clawed_back_at, closed_at";

fn invite_from_row(row: &Row) -> Result<StoredInvite, tokio_postgres::Error> {
    let status: String = row.try_get("status")?;
    Ok(StoredInvite {
        invite_id: row.try_get("invite_id")?,
        code: row.try_get("code")?,
        referrer: MemberId::from_uuid(row.try_get("referrer_member_id")?),
        contact_hash: contact_hash(row, "contact_hash")?,
        status: InviteStatus::parse(&status).unwrap_or(InviteStatus::Revoked),
        sent_at: row.try_get("sent_at")?,
        expires_at: row.try_get("expires_at")?,
        referee: row
            .try_get::<_, Option<Uuid>>("referee_member_id")?
            .map(MemberId::from_uuid),
        accepted_at: row.try_get("accepted_at")?,
        converted_at: row.try_get("converted_at")?,
        qualifying_entry_id: row.try_get("qualifying_entry_id")?,
        referrer_entry_id: row.try_get("referrer_entry_id")?,
        referee_entry_id: row.try_get("referee_entry_id")?,
        clawed_back_at: row.try_get("clawed_back_at")?,
        closed_at: row.try_get("closed_at")?,
    })
}

/// The invite with a code, in a program.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::by_code"))]
pub async fn by_code(
    client: &impl GenericClient,
    program: &ProgramId,
    code: &str,
) -> Result<Option<StoredInvite>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {INVITE_COLUMNS} FROM invites WHERE code = $2 AND program_id = $1"
        ))
        .await?;
    let row = client
        .query_opt(&statement, &[&program.as_str(), &code])
        .await?;
    row.as_ref().map(invite_from_row).transpose()
}

/// The invite with an id.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::by_id"))]
pub async fn by_id(
    client: &impl GenericClient,
    program: &ProgramId,
    invite: Uuid,
) -> Result<Option<StoredInvite>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {INVITE_COLUMNS} FROM invites WHERE program_id = $1 AND invite_id = $2"
        ))
        .await?;
    let row = client
        .query_opt(&statement, &[&program.as_str(), &invite])
        .await?;
    row.as_ref().map(invite_from_row).transpose()
}

/// Accepts a pending invite for the referee: the invite, the referee's row (its open
/// referral) and the events, in one statement. False when the invite was no longer
/// pending (the caller checked under the locks, so only a race with the expiry job).
pub const ACCEPT: &str = concat!(
    "WITH invite AS ( \
       UPDATE invites SET status = 'accepted', referee_member_id = $3, accepted_at = $4 \
       WHERE program_id = $1 AND invite_id = $2 AND status = 'pending' \
       RETURNING invite_id, referrer_member_id), \
     referee AS ( \
       UPDATE members m SET referral_invite_id = i.invite_id, referred_by = i.referrer_member_id, \
         referral_open = true \
       FROM invite i WHERE m.program_id = $1 AND m.member_id = $3 RETURNING m.member_id), \
     outbox AS (",
    outbox_insert!("$1", "$4", "$5", "$6", "$7", "$8"),
    " WHERE EXISTS (SELECT 1 FROM invite)) SELECT count(*) FROM referee"
);

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::accept"))]
pub async fn accept(
    tx: &MemberTx<'_>,
    invite: Uuid,
    referee: MemberId,
    at: DateTime<Utc>,
    events: &[NewEvent],
) -> Result<bool, tokio_postgres::Error> {
    let outbox = OutboxRows::of(events);
    let statement = tx.prepared(ACCEPT).await?;
    let row = tx
        .query_one(
            &statement,
            &[
                &tx.program().as_str(),
                &invite,
                &referee.as_uuid(),
                &at,
                &outbox.ids,
                &outbox.members,
                &outbox.types,
                &outbox.payloads,
            ],
        )
        .await?;
    Ok(row.try_get::<_, i64>(0)? == 1)
}

/// Closes every other pending invite to the contacts (the accepted invite's, the
/// referee's own) as superseded; returns them (id, referrer).
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::supersede"))]
pub async fn supersede(
    tx: &MemberTx<'_>,
    hashes: &[ContactHash],
    except: Uuid,
    at: DateTime<Utc>,
) -> Result<Vec<(Uuid, MemberId)>, tokio_postgres::Error> {
    let statement = tx
        .prepared(
            "UPDATE invites SET status = 'superseded', closed_at = $4 \
             WHERE program_id = $1 AND contact_hash = ANY($2::bytea[]) AND status = 'pending' \
               AND invite_id <> $3 RETURNING invite_id, referrer_member_id",
        )
        .await?;
    let rows = tx
        .query(
            &statement,
            &[&tx.program().as_str(), &hash_bytes(hashes), &except, &at],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, MemberId::from_uuid(row.try_get(1)?))))
        .collect()
}

/// The referee's contact hashes.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::contacts_of"))]
pub async fn contacts_of(
    client: &impl GenericClient,
    program: &ProgramId,
    member: MemberId,
) -> Result<Vec<ContactHash>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT contact_hash FROM member_contacts WHERE program_id = $1 AND member_id = $2",
        )
        .await?;
    let rows = client
        .query(&statement, &[&program.as_str(), &member.as_uuid()])
        .await?;
    rows.iter()
        .map(|row| contact_hash(row, "contact_hash"))
        .collect()
}

/// The referee's first purchase award of at least `min_amount_minor`, if any.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::qualifying_award"))]
pub async fn qualifying_award(
    tx: &MemberTx<'_>,
    referee: MemberId,
    min_amount_minor: i64,
) -> Result<Option<Uuid>, tokio_postgres::Error> {
    let statement = tx
        .prepared(
            "SELECT entry_id FROM ledger_entries WHERE program_id = $1 AND member_id = $2 \
               AND status_at IS NOT NULL AND kind = 'award' AND amount_minor >= $3 \
             ORDER BY status_at, entry_id LIMIT 1",
        )
        .await?;
    let row = tx
        .query_opt(
            &statement,
            &[
                &tx.program().as_str(),
                &referee.as_uuid(),
                &min_amount_minor,
            ],
        )
        .await?;
    row.map(|row| row.try_get(0)).transpose()
}

/// Marks an accepted invite converted with its credits, and closes the referee's open
/// referral, in one statement with the events. False when it was not accepted any more.
pub const CONVERT: &str = concat!(
    "WITH invite AS ( \
       UPDATE invites SET status = 'converted', converted_at = $3, qualifying_entry_id = $4, \
         referrer_entry_id = $5, referee_entry_id = $6 \
       WHERE program_id = $1 AND invite_id = $2 AND status = 'accepted' \
       RETURNING referee_member_id), \
     referee AS ( \
       UPDATE members m SET referral_open = false FROM invite i \
       WHERE m.program_id = $1 AND m.member_id = i.referee_member_id RETURNING m.member_id), \
     outbox AS (",
    outbox_insert!("$1", "$3", "$7", "$8", "$9", "$10"),
    " WHERE EXISTS (SELECT 1 FROM invite)) SELECT count(*) FROM referee"
);

/// The credits of a conversion, for [`convert`].
#[derive(Debug, Clone, Copy)]
pub struct Conversion {
    pub invite: Uuid,
    pub qualifying_entry: Option<Uuid>,
    pub referrer_entry: Option<Uuid>,
    pub referee_entry: Option<Uuid>,
}

#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::convert"))]
pub async fn convert(
    tx: &MemberTx<'_>,
    conversion: &Conversion,
    at: DateTime<Utc>,
    events: &[NewEvent],
) -> Result<bool, tokio_postgres::Error> {
    let outbox = OutboxRows::of(events);
    let statement = tx.prepared(CONVERT).await?;
    let row = tx
        .query_one(
            &statement,
            &[
                &tx.program().as_str(),
                &conversion.invite,
                &at,
                &conversion.qualifying_entry,
                &conversion.referrer_entry,
                &conversion.referee_entry,
                &outbox.ids,
                &outbox.members,
                &outbox.types,
                &outbox.payloads,
            ],
        )
        .await?;
    Ok(row.try_get::<_, i64>(0)? == 1)
}

/// Revokes a pending invite; false when it was not pending any more.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::revoke"))]
pub async fn revoke(
    tx: &MemberTx<'_>,
    invite: Uuid,
    at: DateTime<Utc>,
) -> Result<bool, tokio_postgres::Error> {
    let statement = tx
        .prepared(
            "UPDATE invites SET status = 'revoked', closed_at = $3 \
             WHERE program_id = $1 AND invite_id = $2 AND status = 'pending'",
        )
        .await?;
    Ok(tx
        .execute(&statement, &[&tx.program().as_str(), &invite, &at])
        .await?
        == 1)
}

/// Expires up to `limit` pending invites of a program past their expiry, with one
/// `referral.closed` event each, in one statement; returns how many.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::expire_due"))]
pub async fn expire_due(
    client: &impl GenericClient,
    program: &ProgramId,
    at: DateTime<Utc>,
    limit: i64,
) -> Result<i64, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "WITH due AS ( \
               SELECT invite_id FROM invites WHERE status = 'pending' AND expires_at <= $2 \
                 AND program_id = $1 ORDER BY expires_at LIMIT $3 FOR UPDATE SKIP LOCKED), \
             expired AS ( \
               UPDATE invites v SET status = 'expired', closed_at = $2 FROM due d \
               WHERE v.program_id = $1 AND v.invite_id = d.invite_id AND v.status = 'pending' \
               RETURNING v.invite_id, v.referrer_member_id, v.expires_at), \
             outbox AS ( \
               INSERT INTO events (program_id, event_id, member_id, event_type, payload, \
                 created_at) \
               SELECT $1, gen_random_uuid(), referrer_member_id, 'referral.closed', \
                 jsonb_build_object('invite_id', invite_id, 'referrer_member_id', \
                   referrer_member_id, 'status', 'expired', 'expires_at', expires_at), $2 \
               FROM expired) \
             SELECT count(*) FROM expired",
        )
        .await?;
    let row = client
        .query_one(&statement, &[&program.as_str(), &at, &limit])
        .await?;
    row.try_get(0)
}

/// A page of a referrer's invites, newest first, of one status or all.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::list"))]
pub async fn list(
    client: &impl GenericClient,
    program: &ProgramId,
    referrer: MemberId,
    status: Option<InviteStatus>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<StoredInvite>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {INVITE_COLUMNS} FROM invites \
             WHERE program_id = $1 AND referrer_member_id = $2 \
               AND ($3::text IS NULL OR status = $3) AND ($4::uuid IS NULL OR invite_id < $4) \
             ORDER BY invite_id DESC LIMIT $5"
        ))
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &program.as_str(),
                &referrer.as_uuid(),
                &status.map(InviteStatus::as_str),
                &before,
                &limit,
            ],
        )
        .await?;
    rows.iter().map(invite_from_row).collect()
}

/// A referrer's invites by status, and the points a member earned from referrals (both
/// sides, net of clawbacks).
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::stats"))]
pub async fn stats(
    client: &impl GenericClient,
    program: &ProgramId,
    member: MemberId,
) -> Result<(Vec<(InviteStatus, i64)>, crate::store::Sum), tokio_postgres::Error> {
    let statement = client
        .prepare_cached(
            "SELECT status, count(*) FROM invites \
             WHERE program_id = $1 AND referrer_member_id = $2 GROUP BY status",
        )
        .await?;
    let rows = client
        .query(&statement, &[&program.as_str(), &member.as_uuid()])
        .await?;
    let counts = rows
        .iter()
        .map(|row| {
            let status: String = row.try_get(0)?;
            Ok((
                InviteStatus::parse(&status).unwrap_or(InviteStatus::Revoked),
                row.try_get(1)?,
            ))
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    let earned = client
        .prepare_cached(
            "SELECT COALESCE(sum(CASE WHEN e.kind = 'bonus' THEN e.points \
                                      ELSE -e.reversed_points END), 0)::text \
             FROM ledger_entries e WHERE e.program_id = $1 AND e.member_id = $2 \
               AND ((e.kind = 'bonus' AND e.reason = 'referral') \
                 OR (e.kind = 'award_reversal' AND e.reason = 'referral clawback'))",
        )
        .await?;
    let row = client
        .query_one(&earned, &[&program.as_str(), &member.as_uuid()])
        .await?;
    Ok((counts, row.try_get(0)?))
}

/// The invite a purchase award converted, if any.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::by_qualifying_entry"))]
pub async fn by_qualifying_entry(
    client: &impl GenericClient,
    program: &ProgramId,
    entry: crate::domain::EntryId,
) -> Result<Option<StoredInvite>, tokio_postgres::Error> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {INVITE_COLUMNS} FROM invites \
             WHERE program_id = $1 AND qualifying_entry_id = $2"
        ))
        .await?;
    let row = client
        .query_opt(&statement, &[&program.as_str(), &entry.as_uuid()])
        .await?;
    row.as_ref().map(invite_from_row).transpose()
}

/// Marks a converted invite clawed back, with its event.
#[tracing::instrument(name = "postgres", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "referrals::claw_back"))]
pub async fn claw_back(
    tx: &MemberTx<'_>,
    invite: Uuid,
    at: DateTime<Utc>,
    events: &[NewEvent],
) -> Result<(), super::mutation::WriteError> {
    let outbox = OutboxRows::of(events);
    let statement = tx.prepared(CLAW_BACK).await?;
    let row = tx
        .query_one(
            &statement,
            &[
                &tx.program().as_str(),
                &invite,
                &at,
                &outbox.ids,
                &outbox.members,
                &outbox.types,
                &outbox.payloads,
            ],
        )
        .await?;
    let written: i64 = row.try_get(0)?;
    if written != 1 {
        return Err(super::mutation::WriteError::RowsMissed {
            what: "a converted invite to claw back",
            expected: 1,
            written,
        });
    }
    Ok(())
}

pub const CLAW_BACK: &str = concat!(
    "WITH invite AS ( \
       UPDATE invites SET status = 'clawed_back', clawed_back_at = $3 \
       WHERE program_id = $1 AND invite_id = $2 AND status = 'converted' RETURNING invite_id), \
     outbox AS (",
    outbox_insert!("$1", "$3", "$4", "$5", "$6", "$7"),
    " WHERE EXISTS (SELECT 1 FROM invite)) SELECT count(*) FROM invite"
);
