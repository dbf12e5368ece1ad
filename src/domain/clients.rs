//! The API's callers: client names, scopes, the programs a client may touch, and its bearer
//! secrets (`flash.<name>.<secret>`, only a keyed hash of the secret stored).
use super::InvalidField;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeSet;
use std::fmt;

/// A client's name: 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit.
/// It is the namespace of the client's idempotency keys and is never given to another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientName(String);

impl ClientName {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let valid = !raw.is_empty()
            && raw.len() <= 63
            && !raw.starts_with('-')
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(InvalidField::new(
                "name",
                "must be 1 to 63 characters of a-z, 0-9 and '-', not starting with '-'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a client may do; each RPC needs one (README, "Clients and scopes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Award, AwardBatch (and EnrollMember).
    Award,
    /// Spend, ReverseSpend.
    Spend,
    /// ReverseAward.
    Refund,
    /// Adjust, SetTier.
    Adjust,
    /// Invites and conversions (and EnrollMember).
    Referrals,
    /// Get*, List*, GetLiability, Subscribe, the graph's reads.
    Read,
    /// Programs, jobs, snapshot rebuilds.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::Award,
        Scope::Spend,
        Scope::Refund,
        Scope::Adjust,
        Scope::Referrals,
        Scope::Read,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Award => "award",
            Scope::Spend => "spend",
            Scope::Refund => "refund",
            Scope::Adjust => "adjust",
            Scope::Referrals => "referrals",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(raw: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == raw)
    }
}

/// A client's scopes: a set, or every scope (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scopes {
    All,
    Only(BTreeSet<Scope>),
}

impl Scopes {
    /// `*`, or a comma-separated list of scopes (stored as a text array).
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, InvalidField> {
        let mut scopes = BTreeSet::new();
        for item in items
            .into_iter()
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            if item == "*" {
                return Ok(Scopes::All);
            }
            let scope = Scope::parse(item).ok_or_else(|| {
                InvalidField::new(
                    "scopes",
                    format!(
                        "{item:?} is not a scope: use '*' or some of {}",
                        Scope::ALL.map(Scope::as_str).join(", ")
                    ),
                )
            })?;
            scopes.insert(scope);
        }
        if scopes.is_empty() {
            return Err(InvalidField::new(
                "scopes",
                "name at least one scope, or '*'",
            ));
        }
        Ok(Scopes::Only(scopes))
    }

    pub fn allows(&self, scope: Scope) -> bool {
        match self {
            Scopes::All => true,
            Scopes::Only(scopes) => scopes.contains(&scope),
        }
    }

    /// As stored: `["*"]` or the scopes' names.
    pub fn names(&self) -> Vec<String> {
        match self {
            Scopes::All => vec!["*".into()],
            Scopes::Only(scopes) => scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        }
    }
}

/// The programs a client may touch: a list, or every program (`*`), including programs
/// created after the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramAccess {
    All,
    Only(BTreeSet<String>),
}

impl ProgramAccess {
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, InvalidField> {
        let mut programs = BTreeSet::new();
        for item in items
            .into_iter()
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            if item == "*" {
                return Ok(ProgramAccess::All);
            }
            let program = super::ProgramId::parse(item).map_err(|_| {
                InvalidField::new("programs", format!("{item:?} is not a program id"))
            })?;
            programs.insert(program.as_str().to_owned());
        }
        if programs.is_empty() {
            return Err(InvalidField::new(
                "programs",
                "name at least one program, or '*'",
            ));
        }
        Ok(ProgramAccess::Only(programs))
    }

    pub fn allows(&self, program: &str) -> bool {
        match self {
            ProgramAccess::All => true,
            ProgramAccess::Only(programs) => programs.contains(program),
        }
    }

    /// As stored: `["*"]` or the programs' ids.
    pub fn names(&self) -> Vec<String> {
        match self {
            ProgramAccess::All => vec!["*".into()],
            ProgramAccess::Only(programs) => programs.iter().cloned().collect(),
        }
    }
}

/// The prefix of every bearer token this server issues.
pub const TOKEN_PREFIX: &str = "flash.";

/// Bytes of randomness in a client secret.
const SECRET_BYTES: usize = 32;

/// A client's secret as issued: `flash.<name>.<64 hex digits>`. Shown once, never stored.
pub struct IssuedToken(String);

impl IssuedToken {
    /// A token of `name` with `random` bytes of secret.
    pub fn new(name: &ClientName, random: [u8; SECRET_BYTES]) -> Self {
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("{TOKEN_PREFIX}{name}.{hex}"))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IssuedToken(<hidden>)")
    }
}

/// A bearer token split into the client it names and its secret part; None when it is not
/// shaped like a token this server issues.
pub fn split_token(token: &str) -> Option<(ClientName, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (name, secret) = rest.rsplit_once('.')?;
    let name = ClientName::parse(name).ok()?;
    (secret.len() == SECRET_BYTES * 2 && secret.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some((name, secret))
}

/// The key client secrets are hashed under: derived from the server secret
/// (`FLASH_CONTACT_HASH_KEY`) for this one purpose, so neither hash can stand for the other.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<hidden>)")
    }
}

impl SecretKey {
    pub fn derive(server_secret: &[u8]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(server_secret)
            .expect("HMAC takes keys of any length");
        mac.update(b"flash-loyalty/client-secrets/v1");
        Self(mac.finalize().into_bytes().into())
    }

    fn mac(&self, name: &ClientName, secret: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(name.as_str().as_bytes());
        mac.update(b"\0");
        mac.update(secret.as_bytes());
        mac
    }

    /// The stored hash of a token's secret.
    pub fn hash(&self, token: &IssuedToken) -> [u8; 32] {
        let (name, secret) = split_token(token.expose()).expect("issued tokens are well formed");
        self.mac(&name, secret).finalize().into_bytes().into()
    }

    /// Whether `secret` of `name` hashes to `stored`, compared in constant time.
    pub fn verify(&self, name: &ClientName, secret: &str, stored: &[u8]) -> bool {
        self.mac(name, secret).verify_slice(stored).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_client_and_verify_only_with_their_secret() {
        let name = ClientName::parse("marketplace").unwrap();
        let token = IssuedToken::new(&name, [7; 32]);
        let key = SecretKey::derive(b"a server secret of thirty-two bytes!");
        let stored = key.hash(&token);
        let (parsed, secret) = split_token(token.expose()).unwrap();
        assert_eq!(parsed, name);
        assert!(key.verify(&parsed, secret, &stored));
        let other = IssuedToken::new(&name, [8; 32]);
        let (_, wrong) = split_token(other.expose()).unwrap();
        assert!(!key.verify(&parsed, wrong, &stored));
        let elsewhere = SecretKey::derive(b"another server secret of 32 bytes");
        assert!(!elsewhere.verify(&parsed, secret, &stored));
        // The same secret under another name does not verify either.
        let impostor = ClientName::parse("storefront").unwrap();
        assert!(!key.verify(&impostor, secret, &stored));
    }

    #[test]
    fn malformed_tokens_are_not_split() {
        for token in [
            "",
            "flash.",
            "flash.marketplace",
            "flash.marketplace.abc",
            "Bearer flash.a.00",
            &format!("flash.Market.{}", "0".repeat(64)),
            &format!("flash.m.{}", "g".repeat(64)),
            &format!("other.m.{}", "0".repeat(64)),
        ] {
            assert!(split_token(token).is_none(), "{token}");
        }
        assert!(split_token(&format!("flash.a-b.{}", "0f".repeat(32))).is_some());
    }

    #[test]
    fn scopes_and_programs_parse_lists_and_stars() {
        assert_eq!(Scopes::parse(["*"]).unwrap(), Scopes::All);
        let scopes = Scopes::parse(["award", " read"]).unwrap();
        assert!(scopes.allows(Scope::Award) && scopes.allows(Scope::Read));
        assert!(!scopes.allows(Scope::Spend));
        assert_eq!(scopes.names(), ["award", "read"]);
        assert!(Scopes::parse(["award", "root"]).is_err());
        assert!(Scopes::parse([""]).is_err());
        let programs = ProgramAccess::parse(["acme", "beta"]).unwrap();
        assert!(programs.allows("acme") && !programs.allows("gamma"));
        assert!(ProgramAccess::parse(["*"]).unwrap().allows("anything"));
        assert!(ProgramAccess::parse(["Not a slug"]).is_err());
        assert!(ClientName::parse("-x").is_err());
        assert!(ClientName::parse(&"a".repeat(64)).is_err());
    }
}
