//! Referrals: contacts normalised and reduced to keyed hashes, invite codes, invite
//! statuses. Plain contacts never leave this module's callers' stack: only their hashes
//! are stored, logged or compared.
use super::InvalidField;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// The shortest contact hash key: 32 bytes, the output size of the hash.
pub const CONTACT_KEY_MIN_BYTES: usize = 32;
/// The most contacts one member may enroll with.
pub const MAX_CONTACTS_PER_MEMBER: usize = 10;
/// The longest contact as sent, spaces included: an email address is at most 254.
const CONTACT_MAX_CHARS: usize = 254;

/// What kind of contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactKind {
    Email,
    Phone,
}

impl ContactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ContactKind::Email => "email",
            ContactKind::Phone => "phone",
        }
    }
}

/// A contact in its one normal form: an email trimmed and lower-cased, a phone number as
/// `+` and its digits. Never stored, never printed (its `Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct Contact {
    kind: ContactKind,
    normal: String,
}

impl fmt::Debug for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Contact({}, <hidden>)", self.kind.as_str())
    }
}

impl Contact {
    /// Normalises an email (has an `@`) or a phone number (digits, with `+`, spaces, dots,
    /// dashes and parentheses allowed around them: 8 to 15 digits). The message never
    /// repeats the contact.
    pub fn parse(field: &str, raw: &str) -> Result<Self, InvalidField> {
        // Bounded before any work on it: a phone number's spaces and dots are not.
        if raw.chars().count() > CONTACT_MAX_CHARS {
            return Err(InvalidField::new(
                field,
                format!("must be at most {CONTACT_MAX_CHARS} characters"),
            ));
        }
        let trimmed = raw.trim();
        if trimmed.contains('@') {
            let normal = trimmed.to_lowercase();
            let valid = normal.chars().count() <= 254
                && !normal.chars().any(|c| c.is_whitespace() || c.is_control())
                && match normal.split_once('@') {
                    Some((local, domain)) => {
                        !local.is_empty()
                            && !domain.contains('@')
                            && domain.contains('.')
                            && !domain.starts_with('.')
                            && !domain.ends_with('.')
                    }
                    None => false,
                };
            if !valid {
                return Err(InvalidField::new(
                    field,
                    "is not an email address (local@domain.tld, at most 254 characters)",
                ));
            }
            return Ok(Self {
                kind: ContactKind::Email,
                normal,
            });
        }
        let allowed = |c: char| c.is_ascii_digit() || " .-()+".contains(c);
        let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
        let plus_only_first = trimmed.chars().skip(1).all(|c| c != '+');
        if trimmed.is_empty()
            || !trimmed.chars().all(allowed)
            || !plus_only_first
            || !(8..=15).contains(&digits.len())
        {
            return Err(InvalidField::new(
                field,
                "is neither an email address nor a phone number (8 to 15 digits, in \
                 international form such as +33 6 12 34 56 78)",
            ));
        }
        Ok(Self {
            kind: ContactKind::Phone,
            normal: format!("+{digits}"),
        })
    }

    pub fn kind(&self) -> ContactKind {
        self.kind
    }
}

/// A contact's keyed hash: what is stored and matched.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContactHash(pub [u8; 32]);

impl fmt::Debug for ContactHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContactHash({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// The HMAC-SHA-256 key contacts are hashed under (`FLASH_CONTACT_HASH_KEY`).
#[derive(Clone)]
pub struct ContactKey(Vec<u8>);

impl fmt::Debug for ContactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContactKey(<hidden>)")
    }
}

impl ContactKey {
    /// At least [`CONTACT_KEY_MIN_BYTES`] bytes of secret.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < CONTACT_KEY_MIN_BYTES {
            return Err(format!(
                "the contact hash key must be at least {CONTACT_KEY_MIN_BYTES} bytes, got {}",
                secret.len()
            ));
        }
        Ok(Self(secret.to_vec()))
    }

    /// The keyed hash of a contact; the kind is part of what is hashed.
    pub fn hash(&self, contact: &Contact) -> ContactHash {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(contact.kind.as_str().as_bytes());
        mac.update(b":");
        mac.update(contact.normal.as_bytes());
        ContactHash(mac.finalize().into_bytes().into())
    }
}

/// An invite code from 16 random bytes: 128 bits, URL-safe base64 without padding (22
/// characters).
pub fn invite_code(random: [u8; 16]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
}

/// Whether a caller's code could be one of ours (so a typo is INVALID_ARGUMENT, not a
/// lookup).
pub fn plausible_invite_code(code: &str) -> bool {
    (16..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where an invite stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteStatus {
    Pending,
    Accepted,
    Converted,
    ClawedBack,
    Expired,
    Revoked,
    Superseded,
}

impl InviteStatus {
    pub const ALL: [InviteStatus; 7] = [
        InviteStatus::Pending,
        InviteStatus::Accepted,
        InviteStatus::Converted,
        InviteStatus::ClawedBack,
        InviteStatus::Expired,
        InviteStatus::Revoked,
        InviteStatus::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InviteStatus::Pending => "pending",
            InviteStatus::Accepted => "accepted",
            InviteStatus::Converted => "converted",
            InviteStatus::ClawedBack => "clawed_back",
            InviteStatus::Expired => "expired",
            InviteStatus::Revoked => "revoked",
            InviteStatus::Superseded => "superseded",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }
}

/// Why a contact of a CreateInvites call got no invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteRefusal {
    /// One of the referrer's own contacts.
    OwnContact,
    /// A contact of a member already enrolled.
    AlreadyMember,
    /// The referrer has a pending invite to it already.
    AlreadyInvited,
    /// The same contact earlier in the call.
    DuplicateInBatch,
}

impl InviteRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            InviteRefusal::OwnContact => "own_contact",
            InviteRefusal::AlreadyMember => "already_member",
            InviteRefusal::AlreadyInvited => "already_invited",
            InviteRefusal::DuplicateInBatch => "duplicate_in_batch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_normalise_to_one_form() {
        let key = ContactKey::new(&[7; 32]).unwrap();
        let a = Contact::parse("c", "  Alice@Example.COM ").unwrap();
        let b = Contact::parse("c", "alice@example.com").unwrap();
        assert_eq!(a, b);
        assert_eq!(key.hash(&a), key.hash(&b));
        let p = Contact::parse("c", "+33 (6) 12-34.56.78").unwrap();
        let q = Contact::parse("c", "+33612345678").unwrap();
        assert_eq!(p, q);
        assert_eq!(p.kind(), ContactKind::Phone);
        assert_ne!(key.hash(&a), key.hash(&p));
    }

    #[test]
    fn malformed_contacts_are_refused_without_echoing_them() {
        for bad in [
            "",
            "alice@",
            "@example.com",
            "a@b",
            "a@@b.com",
            "12345",
            "+1 234 5x67 890",
            "1+2345678901",
            "a b@c.com",
        ] {
            let error = Contact::parse("contacts[0]", bad).unwrap_err();
            assert_eq!(error.field, "contacts[0]");
            if !bad.is_empty() {
                assert!(!error.message.contains(bad), "{bad:?} echoed");
            }
        }
    }

    #[test]
    fn the_key_must_be_long_and_matters() {
        assert!(ContactKey::new(&[1; 31]).is_err());
        let contact = Contact::parse("c", "bob@example.com").unwrap();
        let one = ContactKey::new(&[1; 32]).unwrap().hash(&contact);
        let two = ContactKey::new(&[2; 32]).unwrap().hash(&contact);
        assert_ne!(one, two);
        assert!(!format!("{contact:?}").contains("bob"));
    }

    #[test]
    fn codes_are_url_safe_and_long() {
        let code = invite_code([0xff; 16]);
        assert_eq!(code.len(), 22);
        assert!(plausible_invite_code(&code));
        assert!(!plausible_invite_code("short"));
        assert!(!plausible_invite_code(&format!("{code}/")));
    }
}
