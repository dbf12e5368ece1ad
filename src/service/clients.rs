//! The API's clients: who may call, on which programs, with which scopes, how fast. Managed
//! by `flash clients`; every replica keeps them in memory and reads them again every
//! `FLASH_CLIENTS_REFRESH_MS`, so a revocation is refused within that delay everywhere.
use super::Error;
use crate::clock::Clock;
use crate::domain::{
    split_token, ClientName, IssuedToken, ProgramAccess, ProgramId, Scope, Scopes, SecretKey,
};
use crate::store::{self, clients::StoredClient};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use governor::clock::Clock as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Who is calling: the client a bearer token or a certificate named, with what it may do.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: ClientName,
    pub programs: ProgramAccess,
    pub scopes: Scopes,
}

impl Caller {
    /// NOT_FOUND, exactly as for a program that does not exist, when the client may not
    /// touch `program`: a client never learns which programs exist beyond its own.
    pub fn may_use(&self, program: &str) -> Result<(), Error> {
        if self.programs.allows(program) {
            return Ok(());
        }
        Err(match ProgramId::parse(program) {
            Ok(program) => Error::ProgramNotFound { program },
            Err(invalid) => Error::InvalidArgument(invalid),
        })
    }

    /// PERMISSION_DENIED unless the client holds one of `scopes`.
    pub fn holds_any(&self, scopes: &[Scope]) -> Result<(), Error> {
        if scopes.iter().any(|scope| self.scopes.allows(*scope)) {
            return Ok(());
        }
        Err(Error::ScopeMissing {
            client: self.name.to_string(),
            needs: scopes
                .iter()
                .map(|scope| scope.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
        })
    }
}

/// A client as `flash clients list` shows it: never a secret or its hash.
#[derive(Debug, Clone)]
pub struct ClientView {
    pub name: String,
    pub programs: Vec<String>,
    pub scopes: Vec<String>,
    pub cert_subject: Option<String>,
    pub rate_per_second: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation is still accepted.
    pub previous_valid_until: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What `flash clients add` asks for.
#[derive(Debug, Clone)]
pub struct NewClientCommand {
    pub name: ClientName,
    pub programs: ProgramAccess,
    pub scopes: Scopes,
    pub cert_subject: Option<String>,
    pub rate_per_second: Option<u32>,
}

/// A client in a replica's memory.
struct Known {
    caller: Arc<Caller>,
    stored: StoredClient,
    rate_per_second: u32,
    limiter: Arc<DefaultDirectRateLimiter>,
}

/// The clients of the API, shared by every clone.
#[derive(Clone)]
pub struct Clients {
    db: Pool,
    key: SecretKey,
    clock: Arc<dyn Clock>,
    default_rate: u32,
    known: Arc<RwLock<HashMap<String, Arc<Known>>>>,
    /// Lookups of names this replica does not know yet (a client added since the last
    /// refresh): bounded, so tokens naming random clients cannot turn into a flood of
    /// queries. Past the bound a new client waits for the next refresh.
    lookups: Arc<DefaultDirectRateLimiter>,
}

/// Lookups a second of client names a replica has not seen.
const LOOKUPS_PER_SECOND: u32 = 50;

/// The longest certificate subject a client may be mapped to.
const CERT_SUBJECT_MAX_CHARS: usize = 1024;

impl Clients {
    /// `server_secret` is the server's secret (`FLASH_CONTACT_HASH_KEY`); client secrets
    /// are hashed under a key derived from it. `default_rate` is the calls a second of a
    /// client without a rate of its own.
    pub fn new(db: Pool, server_secret: &[u8], clock: Arc<dyn Clock>, default_rate: u32) -> Self {
        Self {
            db,
            key: SecretKey::derive(server_secret),
            clock,
            default_rate: default_rate.max(1),
            known: Arc::default(),
            lookups: Arc::new(RateLimiter::direct(Quota::per_second(
                NonZeroU32::new(LOOKUPS_PER_SECOND).unwrap_or(NonZeroU32::MIN),
            ))),
        }
    }

    /// Creates a client and its first secret (shown once: only its hash is kept).
    pub async fn add(&self, command: NewClientCommand) -> Result<(ClientView, IssuedToken), Error> {
        if let Some(subject) = &command.cert_subject {
            if subject.is_empty() || subject.chars().count() > CERT_SUBJECT_MAX_CHARS {
                return Err(Error::invalid(
                    "cert_subject",
                    format!("must be 1 to {CERT_SUBJECT_MAX_CHARS} characters"),
                ));
            }
        }
        let rate = command
            .rate_per_second
            .map(|rate| {
                i32::try_from(rate)
                    .ok()
                    .filter(|rate| *rate > 0)
                    .ok_or_else(|| Error::invalid("rate", "must be 1 to 2147483647"))
            })
            .transpose()?;
        let token = self.issue(&command.name)?;
        let programs = command.programs.names();
        let scopes = command.scopes.names();
        let hash = self.key.hash(&token);
        let inserted = store::clients::insert(
            &self.db.get().await?,
            &store::clients::NewClient {
                name: command.name.as_str(),
                programs: &programs,
                scopes: &scopes,
                secret_hash: &hash,
                cert_subject: command.cert_subject.as_deref(),
                rate_per_second: rate,
                created_at: self.clock.now(),
            },
        )
        .await?;
        if !inserted {
            return Err(Error::ClientExists {
                name: command.name.to_string(),
            });
        }
        let stored = self.fetch(command.name.as_str()).await?.ok_or_else(|| {
            Error::Unexpected(anyhow::anyhow!("client {} vanished", command.name))
        })?;
        // This replica knows it at once; the others at their next refresh or first call.
        if let Some(known) = self.know(stored.clone(), None) {
            self.known
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(stored.name.clone(), Arc::new(known));
        }
        Ok((view(&stored), token))
    }

    /// Every client, revoked ones included.
    pub async fn list(&self) -> Result<Vec<ClientView>, Error> {
        let stored = store::clients::list(&self.db.get().await?).await?;
        Ok(stored.iter().map(view).collect())
    }

    /// Revokes a client: every replica refuses it within `FLASH_CLIENTS_REFRESH_MS`.
    pub async fn revoke(&self, name: &ClientName) -> Result<(), Error> {
        let revoked =
            store::clients::revoke(&self.db.get().await?, name.as_str(), self.clock.now()).await?;
        if !revoked {
            return Err(Error::ClientNotFound {
                name: name.to_string(),
            });
        }
        self.forget(name.as_str());
        Ok(())
    }

    /// A new secret for a live client; the old one stays valid for `grace`.
    pub async fn rotate(&self, name: &ClientName, grace: Duration) -> Result<IssuedToken, Error> {
        let token = self.issue(name)?;
        let now = self.clock.now();
        let until = chrono::Duration::from_std(grace)
            .ok()
            .and_then(|grace| now.checked_add_signed(grace))
            .ok_or_else(|| Error::invalid("grace", "is too long"))?;
        let rotated = store::clients::rotate(
            &self.db.get().await?,
            name.as_str(),
            &self.key.hash(&token),
            until,
            now,
        )
        .await?;
        if !rotated {
            return Err(Error::ClientNotFound {
                name: name.to_string(),
            });
        }
        self.forget(name.as_str());
        Ok(token)
    }

    /// The client a bearer token names, when its secret is one of the client's valid ones
    /// (compared in constant time) and the client is not revoked; UNAUTHENTICATED otherwise,
    /// with the same message whatever was wrong with the token.
    pub async fn authenticate(&self, token: &str) -> Result<(Arc<Caller>, Limiter), Error> {
        let refused = || {
            Error::Unauthenticated(
                "the bearer token is not valid: it names no live client or its secret is \
                 wrong, revoked or rotated out"
                    .into(),
            )
        };
        let (name, secret) = split_token(token).ok_or_else(refused)?;
        let known = self.known(name.as_str()).await?.ok_or_else(refused)?;
        let stored = &known.stored;
        let now = self.clock.now();
        let current = self.key.verify(&name, secret, &stored.secret_hash);
        let previous = stored
            .previous_secret_hash
            .as_deref()
            .zip(stored.previous_valid_until)
            .is_some_and(|(hash, until)| now < until && self.key.verify(&name, secret, hash));
        if stored.revoked_at.is_some() || !(current || previous) {
            return Err(refused());
        }
        Ok((known.caller.clone(), limiter(&known)))
    }

    /// The client a verified certificate subject (mutual TLS) is mapped to.
    async fn authenticate_subject(&self, subject: &str) -> Result<(Arc<Caller>, Limiter), Error> {
        let found = self
            .read()
            .values()
            .find(|known| known.stored.cert_subject.as_deref() == Some(subject))
            .cloned();
        let known = match found {
            Some(known) => known,
            None => {
                // A client added since the last refresh.
                self.refresh().await?;
                self.read()
                    .values()
                    .find(|known| known.stored.cert_subject.as_deref() == Some(subject))
                    .cloned()
                    .ok_or_else(|| {
                        Error::Unauthenticated(format!(
                            "the client certificate's subject {subject:?} is no client's"
                        ))
                    })?
            }
        };
        if known.stored.revoked_at.is_some() {
            return Err(Error::Unauthenticated(format!(
                "the client of certificate subject {subject:?} is revoked"
            )));
        }
        Ok((known.caller.clone(), limiter(&known)))
    }

    /// Reads every client again (a revocation, a rotation, a new rate).
    pub async fn refresh(&self) -> Result<(), Error> {
        let stored = store::clients::list(&self.db.get().await?).await?;
        let fresh: HashMap<String, Arc<Known>> = {
            let known = self.read();
            stored
                .into_iter()
                .filter_map(|stored| {
                    let kept = known.get(&stored.name);
                    let next = self.know(stored, kept.map(|k| &**k))?;
                    Some((next.stored.name.clone(), Arc::new(next)))
                })
                .collect()
        };
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Refreshes every `interval` until the task is dropped; a failed refresh keeps what
    /// was known and is logged.
    pub async fn watch(self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            if let Err(error) = self.refresh().await {
                tracing::warn!(error = %error, "reading the clients again failed");
            }
        }
    }

    fn issue(&self, name: &ClientName) -> Result<IssuedToken, Error> {
        let mut random = [0u8; 32];
        getrandom::fill(&mut random)
            .map_err(|error| Error::Unexpected(anyhow::anyhow!("no randomness: {error}")))?;
        Ok(IssuedToken::new(name, random))
    }

    async fn fetch(&self, name: &str) -> Result<Option<StoredClient>, Error> {
        Ok(store::clients::get(&self.db.get().await?, name).await?)
    }

    /// A client from memory, or from the database when this replica has not seen it yet.
    async fn known(&self, name: &str) -> Result<Option<Arc<Known>>, Error> {
        if let Some(known) = self.read().get(name) {
            return Ok(Some(known.clone()));
        }
        if self.lookups.check().is_err() {
            return Ok(None);
        }
        let Some(stored) = self.fetch(name).await? else {
            return Ok(None);
        };
        let Some(known) = self.know(stored, None) else {
            return Ok(None);
        };
        // Concurrent first calls share the first one's entry (and its token bucket).
        let known = self
            .known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(known))
            .clone();
        Ok(Some(known))
    }

    /// A stored client as kept in memory, its rate limiter carried over from `kept` when its
    /// rate did not change; None (logged) when the row does not parse.
    fn know(&self, stored: StoredClient, kept: Option<&Known>) -> Option<Known> {
        let parsed = ClientName::parse(&stored.name).and_then(|name| {
            Ok(Caller {
                name,
                programs: ProgramAccess::parse(stored.programs.iter().map(String::as_str))?,
                scopes: Scopes::parse(stored.scopes.iter().map(String::as_str))?,
            })
        });
        let caller = match parsed {
            Ok(caller) => caller,
            Err(error) => {
                tracing::error!(client = %stored.name, error = %error, "a stored client does not parse; it is refused");
                return None;
            }
        };
        let rate = stored
            .rate_per_second
            .and_then(|rate| u32::try_from(rate).ok())
            .unwrap_or(self.default_rate)
            .max(1);
        let limiter = match kept {
            Some(kept) if kept.rate_per_second == rate => kept.limiter.clone(),
            _ => Arc::new(RateLimiter::direct(Quota::per_second(
                NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN),
            ))),
        };
        Some(Known {
            caller: Arc::new(caller),
            stored,
            rate_per_second: rate,
            limiter,
        })
    }

    fn forget(&self, name: &str) {
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Known>>> {
        self.known.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a request presents to prove who calls: the `authorization` metadata or header as
/// sent, and the subject of a verified client certificate (mutual TLS).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub authorization: Option<Vec<u8>>,
    pub cert_subject: Option<String>,
}

impl Clients {
    /// The caller of a request, when it may make it: authenticated (its bearer token,
    /// else its certificate), within its rate, holding one of `scopes` (None: any client).
    pub async fn admit(
        &self,
        credentials: Credentials,
        scopes: Option<&[Scope]>,
    ) -> Result<Arc<Caller>, Error> {
        let (caller, limiter) = self.identify(credentials).await?;
        limiter.admit()?;
        if let Some(scopes) = scopes {
            caller.holds_any(scopes)?;
        }
        Ok(caller)
    }

    async fn identify(&self, credentials: Credentials) -> Result<(Arc<Caller>, Limiter), Error> {
        if let Some(value) = credentials.authorization {
            let token = std::str::from_utf8(&value)
                .ok()
                .and_then(|value| {
                    let (scheme, token) = value.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                })
                .ok_or_else(|| {
                    Error::Unauthenticated(
                        "the authorization must be `Bearer <token>` (the token `flash clients \
                         add` printed)"
                            .into(),
                    )
                })?;
            return self.authenticate(token).await;
        }
        if let Some(subject) = credentials.cert_subject {
            return self.authenticate_subject(&subject).await;
        }
        Err(Error::Unauthenticated(
            "no credentials: send `authorization: Bearer <token>` with a token `flash clients \
             add` printed (or a client certificate, with mutual TLS)"
                .into(),
        ))
    }
}

/// A client's token bucket.
#[derive(Clone)]
pub struct Limiter {
    client: String,
    rate_per_second: u32,
    bucket: Arc<DefaultDirectRateLimiter>,
}

impl Limiter {
    /// Takes one call from the bucket; RESOURCE_EXHAUSTED with the wait when it is empty.
    pub fn admit(&self) -> Result<(), Error> {
        self.bucket.check().map_err(|not_until| Error::RateLimited {
            client: self.client.clone(),
            rate_per_second: self.rate_per_second,
            retry_after: not_until.wait_time_from(governor::clock::DefaultClock::default().now()),
        })
    }
}

fn limiter(known: &Known) -> Limiter {
    Limiter {
        client: known.stored.name.clone(),
        rate_per_second: known.rate_per_second,
        bucket: known.limiter.clone(),
    }
}

fn view(stored: &StoredClient) -> ClientView {
    ClientView {
        name: stored.name.clone(),
        programs: stored.programs.clone(),
        scopes: stored.scopes.clone(),
        cert_subject: stored.cert_subject.clone(),
        rate_per_second: stored.rate_per_second,
        created_at: stored.created_at,
        rotated_at: stored.rotated_at,
        previous_valid_until: stored.previous_valid_until,
        revoked_at: stored.revoked_at,
    }
}
