-- Member-get-member referrals (issue 14).

-- Contacts, only as keyed hashes (HMAC-SHA-256 of the normalised contact under
-- FLASH_CONTACT_HASH_KEY): matching works, a leak reveals no email or phone number. One
-- contact belongs to at most one member of a program.
CREATE TABLE member_contacts (
    program_id   text NOT NULL,
    contact_hash bytea NOT NULL CHECK (octet_length(contact_hash) = 32),
    member_id    uuid NOT NULL,
    contact_kind text NOT NULL CHECK (contact_kind IN ('email', 'phone')),
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (program_id, contact_hash),
    FOREIGN KEY (program_id, member_id) REFERENCES members (program_id, member_id)
);
CREATE INDEX member_contacts_member ON member_contacts (program_id, member_id);

-- Invites: pending -> accepted -> converted (-> clawed_back); pending -> expired | revoked
-- | superseded. Each transition keeps its instant.
CREATE TABLE invites (
    program_id          text NOT NULL,
    invite_id           uuid NOT NULL,
    code                text NOT NULL UNIQUE CHECK (char_length(code) BETWEEN 16 AND 64),
    referrer_member_id  uuid NOT NULL,
    contact_hash        bytea NOT NULL CHECK (octet_length(contact_hash) = 32),
    contact_kind        text NOT NULL CHECK (contact_kind IN ('email', 'phone')),
    status              text NOT NULL CHECK (status IN
        ('pending', 'accepted', 'converted', 'clawed_back', 'expired', 'revoked', 'superseded')),
    -- The CreateInvites entry that sent it.
    sent_entry_id       uuid NOT NULL,
    sent_at             timestamptz NOT NULL,
    -- The program-local day it was sent: what the per-day quota counts.
    sent_day            date NOT NULL,
    expires_at          timestamptz NOT NULL,
    referee_member_id   uuid,
    accepted_at         timestamptz,
    converted_at        timestamptz,
    -- The purchase award that converted it (none when converted explicitly).
    qualifying_entry_id uuid,
    referrer_entry_id   uuid,
    referee_entry_id    uuid,
    clawed_back_at      timestamptz,
    closed_at           timestamptz,
    PRIMARY KEY (program_id, invite_id),
    FOREIGN KEY (program_id, referrer_member_id) REFERENCES members (program_id, member_id),
    FOREIGN KEY (program_id, referee_member_id) REFERENCES members (program_id, member_id),
    CONSTRAINT invite_expires_after_sending CHECK (expires_at > sent_at),
    CONSTRAINT not_self_referral CHECK (referee_member_id IS DISTINCT FROM referrer_member_id),
    CONSTRAINT accepted_has_referee CHECK ((status IN ('accepted', 'converted', 'clawed_back'))
        = (referee_member_id IS NOT NULL AND accepted_at IS NOT NULL)),
    -- The credits' entries are absent only when the rules paid no points to that side.
    CONSTRAINT converted_has_instant CHECK ((status IN ('converted', 'clawed_back'))
        = (converted_at IS NOT NULL)),
    CONSTRAINT clawed_back_has_instant CHECK ((status = 'clawed_back') = (clawed_back_at IS NOT NULL)),
    CONSTRAINT closed_has_instant CHECK ((status IN ('expired', 'revoked', 'superseded'))
        = (closed_at IS NOT NULL))
);
-- A member is referred once: the first accepted invite wins, for ever.
CREATE UNIQUE INDEX invites_one_referral_per_referee ON invites (program_id, referee_member_id)
    WHERE referee_member_id IS NOT NULL;
-- A referrer's invites by day (the quotas, ListInvites).
CREATE INDEX invites_referrer ON invites (program_id, referrer_member_id, sent_day);
-- Pending invites to a contact (superseding, one pending invite per referrer and contact).
CREATE INDEX invites_pending_contact ON invites (program_id, contact_hash) WHERE status = 'pending';
-- Pending invites by expiry (the invite-expiry job).
CREATE INDEX invites_pending_expiry ON invites (expires_at, program_id, invite_id)
    WHERE status = 'pending';
-- The invite a purchase converted (clawback on its refund).
CREATE INDEX invites_qualifying ON invites (program_id, qualifying_entry_id)
    WHERE qualifying_entry_id IS NOT NULL;

-- The referral a member accepted and that is waiting for its qualifying purchase: read with
-- the member's row by every award, so the award path finds it without another lookup.
ALTER TABLE members
    ADD COLUMN referral_invite_id uuid,
    ADD COLUMN referred_by        uuid,
    ADD COLUMN referral_open      boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT referral_has_referrer CHECK ((referral_invite_id IS NULL) = (referred_by IS NULL)),
    ADD CONSTRAINT open_referral_is_known CHECK (NOT referral_open OR referral_invite_id IS NOT NULL);

-- Referral operations are entries too (no points): their key, request and outcome make
-- them idempotent like every mutation, and the history shows them.
ALTER TABLE ledger_entries
    DROP CONSTRAINT ledger_entries_kind_check,
    ADD CONSTRAINT ledger_entries_kind_check CHECK (kind IN
        ('award', 'spend', 'award_reversal', 'spend_reversal', 'adjustment', 'expiry', 'bonus',
         'tier_set', 'referral')),
    ADD CONSTRAINT referral_moves_no_points CHECK (kind <> 'referral' OR
        (points = 0 AND reason IS NOT NULL AND status_points IS NULL));
