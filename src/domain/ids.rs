//! Identifiers that arrive as strings and are parsed once at the edge.
use super::InvalidField;
use std::fmt;
use uuid::Uuid;

/// A program (tenant) slug: `[a-z0-9-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProgramId(String);

impl ProgramId {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let valid_chars = raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if raw.is_empty() || raw.len() > 64 || !valid_chars {
            return Err(InvalidField::new(
                "program_id",
                "must be 1 to 64 characters of a-z, 0-9 and '-'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProgramId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A member's id: a UUID chosen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(Uuid);

impl MemberId {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        Uuid::try_parse(raw)
            .map(Self)
            .map_err(|_| InvalidField::new("member_id", "must be a UUID"))
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A ledger entry's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryId(Uuid);

impl EntryId {
    /// A new, time-ordered id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, InvalidField> {
        Uuid::try_parse(raw)
            .map(Self)
            .map_err(|_| InvalidField::new(field, "must be an entry id (a UUID)"))
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The caller's key that makes a mutation safe to retry: 1 to 128 printable characters,
/// unique among the keys of the client that sent it (its namespace): one client can never
/// replay, read or collide with another's. The engine's own keys (derived credits, expiry)
/// are in the engine's namespace, the empty client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    client: String,
    key: String,
}

impl IdempotencyKey {
    pub const MAX_CHARS: usize = 128;

    /// A key `client` sent.
    pub fn parse(client: &super::ClientName, raw: &str) -> Result<Self, InvalidField> {
        let chars = raw.chars().count();
        if chars == 0 || chars > Self::MAX_CHARS {
            return Err(InvalidField::new(
                "idempotency_key",
                format!("must be 1 to {} characters", Self::MAX_CHARS),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(InvalidField::new(
                "idempotency_key",
                "must not contain control characters",
            ));
        }
        if raw.starts_with(Self::DERIVED_PREFIX) {
            return Err(InvalidField::new(
                "idempotency_key",
                format!(
                    "keys starting with {:?} are reserved for credits the engine derives \
                     from their cause (bonuses)",
                    Self::DERIVED_PREFIX
                ),
            ));
        }
        Ok(Self {
            client: client.as_str().to_owned(),
            key: raw.to_owned(),
        })
    }

    /// Keys of derived credits start with this; callers cannot send one.
    pub const DERIVED_PREFIX: &'static str = "flash:";

    /// The key of a credit derived from its cause (`flash:birthday:{member}:{year}`, …):
    /// the same cause always makes the same key, so it is paid once, whichever client's
    /// call caused it.
    pub fn derived(cause: &str) -> Self {
        let mut key = format!("{}{cause}", Self::DERIVED_PREFIX);
        while key.chars().count() > Self::MAX_CHARS {
            key.pop();
        }
        Self::engine(key)
    }

    /// A key of the engine's own work (the expiry of a batch), in the engine's namespace.
    pub fn engine(key: String) -> Self {
        Self {
            client: String::new(),
            key,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The client whose namespace the key is in; empty for the engine's keys.
    pub fn client(&self) -> &str {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_ids_are_slugs() {
        assert!(ProgramId::parse("acme-2").is_ok());
        assert!(ProgramId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "Acme", "a_b", "a b", "é", &"a".repeat(65)] {
            assert!(ProgramId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        let client = crate::domain::ClientName::parse("tests").unwrap();
        assert!(IdempotencyKey::parse(&client, "k").is_ok());
        assert!(IdempotencyKey::parse(&client, &"é".repeat(128)).is_ok());
        assert!(IdempotencyKey::parse(&client, "").is_err());
        assert!(IdempotencyKey::parse(&client, &"k".repeat(129)).is_err());
        assert!(IdempotencyKey::parse(&client, "a\nb").is_err());
    }

    #[test]
    fn member_ids_are_uuids() {
        assert!(MemberId::parse("6f1c0f7e-3c1a-4d55-9a37-0b3b7c2d4e10").is_ok());
        assert!(MemberId::parse("not-a-uuid").is_err());
        assert!(MemberId::parse("").is_err());
    }
}
