//! Test harness: `spawn_app()` creates a database, migrates it, serves on 127.0.0.1:0
//! and hands back clients, the clock and the tie-out check.
use chrono::{DateTime, TimeZone, Utc};
use deadpool_postgres::Pool;
use flash_loyalty::app::Application;
use flash_loyalty::clock::ManualClock;
use flash_loyalty::config::Settings;
use flash_loyalty::grpc::proto::{
    self, events_client::EventsClient, graph_client::GraphClient, ledger_client::LedgerClient,
    programs_client::ProgramsClient, referrals_client::ReferralsClient, tiers_client::TiersClient,
};
use flash_loyalty::service::Ledger;
use flash_loyalty::store;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::transport::Channel;
use uuid::Uuid;

pub use flash_testing_support::dispatch::{Authed, Bearer, Clients};

/// The proxy, the private Redis and the small helpers every harness shares.
pub use flash_testing_support::proxy::Proxy;
pub use flash_testing_support::redis::PrivateRedis;
pub use flash_testing_support::{free_port, timestamp};

pub const PROGRAM: &str = "acme";

/// The admin connection tests create their databases with.
pub fn admin_url() -> String {
    std::env::var("FLASH_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("FLASH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The first instant of every test: noon UTC on 1 March 2026.
pub fn start_of_test() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

/// A running server on its own database and Redis key prefix.
pub struct TestApp {
    pub address: SocketAddr,
    pub ledger: LedgerClient<Authed>,
    pub programs: ProgramsClient<Authed>,
    pub tiers: TiersClient<Authed>,
    pub events: EventsClient<Authed>,
    pub referrals: ReferralsClient<Authed>,
    pub graph: GraphClient<Authed>,
    /// The HTTP port (graph page).
    pub http: SocketAddr,
    pub clock: ManualClock,
    /// A pool on the test's database, for checks the API does not expose.
    pub db: Pool,
    /// The server's use cases, for the expiry sweep and the audit.
    pub service: Ledger,
    pub database_url: String,
    /// The channel to the server, for clients calling as another client.
    pub channel: Channel,
    /// The API's clients, to create more.
    pub api_clients: flash_loyalty::service::Clients,
    /// The bearer token of the client every test client calls as: every program, every
    /// scope, a rate no test reaches.
    pub admin_token: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The serving task: done once a shutdown let every in-flight call finish.
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// The server's clients, for the shared dispatch.
    pub fn clients(&self) -> Clients {
        Clients::new(self.channel.clone(), Bearer::new(&self.admin_token))
    }

    /// Creates a client and returns its token.
    pub async fn add_client(
        &self,
        name: &str,
        programs: &[&str],
        scopes: &[&str],
        rate_per_second: Option<u32>,
    ) -> String {
        use flash_loyalty::domain::{ClientName, ProgramAccess, Scopes};
        let (_, token) = self
            .api_clients
            .add(flash_loyalty::service::NewClientCommand {
                name: ClientName::parse(name).unwrap(),
                programs: ProgramAccess::parse(programs.iter().copied()).unwrap(),
                scopes: Scopes::parse(scopes.iter().copied()).unwrap(),
                cert_subject: None,
                rate_per_second,
            })
            .await
            .expect("add a client");
        token.expose().to_owned()
    }

    /// Clients calling as the client of `token`.
    pub fn clients_as(&self, token: &str) -> Clients {
        Clients::new(self.channel.clone(), Bearer::new(token))
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        drop_database(&self.database_url);
    }
}

/// Drops a test's database, so a passing run leaves no `flash_test_*` behind. Best-effort:
/// a failure is printed, never a panic in `drop`. `WITH (FORCE)` ends the sessions the
/// server's pool still holds. Runs on a thread of its own with its own runtime, so it is
/// safe from any runtime (or none) and waits until the database is gone.
pub fn drop_database(database_url: &str) {
    let Some(name) = database_url.rsplit('/').next().map(str::to_owned) else {
        return;
    };
    if !name.starts_with("flash_test_") {
        return;
    }
    let dropping = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
    });
    match dropping.join() {
        Ok(Ok(())) => {}
        Ok(Err(error)) => eprintln!("dropping the test database {database_url}: {error}"),
        Err(_) => eprintln!("dropping the test database {database_url}: the thread panicked"),
    }
}

/// A server with default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The contact hash key of test servers.
pub const TEST_CONTACT_KEY: &str = "test-contact-hash-key-of-32-bytes-or-more";

/// A server whose settings `customize` may change (a dead Redis, a proxy, …).
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    if let Ok(filter) = std::env::var("FLASH_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }
    let database_url = create_database().await;
    let redis_prefix = format!("test:{}:", Uuid::new_v4().simple());
    let mut settings = Settings::defaults();
    settings.database_url = database_url.clone();
    settings.redis_url = redis_url();
    settings.redis_prefix = redis_prefix.clone();
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.http_listen = "127.0.0.1:0".into();
    settings.db_pool_size = 24;
    settings.contact_hash_key = Some(TEST_CONTACT_KEY.into());
    // Generous on a shared 2-core machine: these tests check outcomes, not latency.
    settings.lock_timeout_ms = 20_000;
    settings.statement_timeout_ms = 30_000;
    // Tests that race 100 calls check the ledger's answers, not load shedding (the limits
    // tests set their own): far above any test's concurrency.
    settings.max_in_flight = Some(10_000);
    customize(&mut settings);
    let clock = ManualClock::starting_at(start_of_test());
    let app = Application::build(&settings, Arc::new(clock.clone()))
        .await
        .expect("build app");
    store::migrate(app.pool()).await.expect("migrate");
    let address = app.local_addr();
    let http = app.http_addr().expect("the test server's HTTP port");
    let db = app.pool().clone();
    let service = app.ledger().clone();
    let api_clients = app.clients().clone();
    let (_, admin) = api_clients
        .add(flash_loyalty::service::NewClientCommand {
            name: flash_loyalty::domain::ClientName::parse("tests").unwrap(),
            programs: flash_loyalty::domain::ProgramAccess::All,
            scopes: flash_loyalty::domain::Scopes::All,
            cert_subject: None,
            rate_per_second: Some(i32::MAX as u32),
        })
        .await
        .expect("create the tests' client");
    let admin_token = admin.expose().to_owned();
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.serve(async {
        let _ = stop.await;
    }));
    let endpoint = format!("http://{address}");
    let channel = Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .expect("connect to the test server");
    let bearer = Bearer::new(&admin_token);
    TestApp {
        address,
        ledger: LedgerClient::with_interceptor(channel.clone(), bearer.clone()),
        programs: ProgramsClient::with_interceptor(channel.clone(), bearer.clone()),
        tiers: TiersClient::with_interceptor(channel.clone(), bearer.clone()),
        events: EventsClient::with_interceptor(channel.clone(), bearer.clone()),
        referrals: ReferralsClient::with_interceptor(channel.clone(), bearer),
        graph: GraphClient::with_interceptor(channel.clone(), Bearer::new(&admin_token)),
        channel,
        api_clients,
        admin_token,
        http,
        clock,
        db,
        service,
        database_url,
        shutdown: Some(shutdown),
        served: Some(served),
    }
}

pub async fn create_database() -> String {
    let name = format!("flash_test_{}", Uuid::new_v4().simple());
    let (client, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the admin database");
    tokio::spawn(connection);
    client
        .execute(&format!("CREATE DATABASE {name}"), &[])
        .await
        .expect("create the test database");
    let mut config: tokio_postgres::Config = admin_url().parse().unwrap();
    config.dbname(&name);
    let host = "127.0.0.1";
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres").to_owned();
    format!("postgres://{user}@{host}:{port}/{name}")
}

/// The rules most tests use: USD, 1 point per dollar, $1 minimum, no cap, a year.
pub fn usd_rules() -> proto::ProgramRules {
    proto::ProgramRules {
        currency: "USD".into(),
        timezone: "Europe/Paris".into(),
        base_rate_bp: 10_000,
        min_amount_minor: 100,
        daily_cap_points: None,
        points_validity_days: 365,
        tiers: vec![],
        ..Default::default()
    }
}

/// JPY at 100 points per yen with a 10× tier: the largest purchase earns 10^18 points.
pub fn quintillion_rules() -> proto::ProgramRules {
    let mut rules = usd_rules();
    rules.currency = "JPY".into();
    rules.base_rate_bp = 1_000_000;
    rules.min_amount_minor = 0;
    rules.tiers = vec![proto::Tier {
        code: "member".into(),
        name: "Member".into(),
        qualify_points: 0,
        maintain_points: 0,
        multiplier_bp: 100_000,
    }];
    rules
}

impl TestApp {
    /// Starts the server's graceful shutdown and hands back its serving task, which ends
    /// once the calls in flight are answered.
    pub fn shut_down(&mut self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.served.take().expect("the server is served once")
    }

    /// Rows in every table of the test database, by table: what "nothing was written"
    /// is checked against when any table could have been touched.
    pub async fn table_row_counts(&self) -> std::collections::BTreeMap<String, i64> {
        let client = self.db.get().await.unwrap();
        let tables: Vec<String> = client
            .query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut counts = std::collections::BTreeMap::new();
        for table in tables {
            let row = client
                .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
                .await
                .unwrap();
            counts.insert(table, row.get(0));
        }
        counts
    }

    pub async fn create_program(&mut self, rules: proto::ProgramRules) {
        self.create_named_program(PROGRAM, rules).await;
    }

    pub async fn create_named_program(&mut self, program_id: &str, rules: proto::ProgramRules) {
        self.programs
            .create_program(proto::CreateProgramRequest {
                program_id: program_id.into(),
                name: "Acme".into(),
                rules: Some(rules),
            })
            .await
            .expect("create program");
    }

    /// Enrolls a new member of [`PROGRAM`] and returns its id.
    pub async fn enroll(&mut self) -> String {
        let member_id = Uuid::new_v4().to_string();
        self.ledger
            .enroll_member(proto::EnrollMemberRequest {
                program_id: PROGRAM.into(),
                member_id: member_id.clone(),
                ..Default::default()
            })
            .await
            .expect("enroll");
        member_id
    }

    pub async fn member(&mut self, member_id: &str) -> proto::Member {
        self.ledger
            .get_member(proto::GetMemberRequest {
                program_id: PROGRAM.into(),
                member_id: member_id.into(),
            })
            .await
            .expect("get member")
            .into_inner()
            .member
            .unwrap()
    }

    /// A purchase award of `amount_minor` USD cents with a fresh key and order id.
    pub fn purchase(&self, member_id: &str, amount_minor: i64) -> proto::AwardRequest {
        let order = Uuid::new_v4().simple().to_string();
        proto::AwardRequest {
            program_id: PROGRAM.into(),
            member_id: member_id.into(),
            idempotency_key: format!("award-{order}"),
            source: proto::PurchaseSource::Receipt as i32,
            external_ref: format!("order-{order}"),
            amount_minor,
            currency: "USD".into(),
            occurred_at: Some(timestamp(self.clock_now())),
        }
    }

    pub fn clock_now(&self) -> DateTime<Utc> {
        use flash_loyalty::clock::Clock;
        self.clock.now()
    }

    pub async fn award(&mut self, request: proto::AwardRequest) -> proto::AwardResponse {
        self.ledger
            .award(request)
            .await
            .expect("award")
            .into_inner()
    }

    /// Awards `points` (at 1 point per dollar) now and returns the award.
    pub async fn earn(&mut self, member_id: &str, points: i64) -> proto::AwardResponse {
        self.award(self.purchase(member_id, points * 100)).await
    }

    pub fn spend_request(&self, member_id: &str, points: i64) -> proto::SpendRequest {
        let key = Uuid::new_v4().simple().to_string();
        proto::SpendRequest {
            program_id: PROGRAM.into(),
            member_id: member_id.into(),
            idempotency_key: format!("spend-{key}"),
            points,
            reference: format!("reward-{key}"),
        }
    }

    pub async fn spend(&mut self, member_id: &str, points: i64) -> proto::SpendResponse {
        let request = self.spend_request(member_id, points);
        self.ledger
            .spend(request)
            .await
            .expect("spend")
            .into_inner()
    }

    /// The batch an entry credited.
    pub async fn allocation_batch_of(&self, entry_id: &str) -> String {
        let client = self.db.get().await.unwrap();
        let entry: Uuid = entry_id.parse().unwrap();
        client
            .query_one(
                "SELECT batch_id::text FROM point_batches WHERE entry_id = $1",
                &[&entry],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Every allocation row of an entry as (batch, signed points), in batch FIFO order.
    pub async fn allocation_rows(&self, entry_id: &str) -> Vec<(String, i64)> {
        let client = self.db.get().await.unwrap();
        let entry: Uuid = entry_id.parse().unwrap();
        client
            .query(
                "SELECT a.batch_id::text, a.points FROM allocations a \
                 JOIN point_batches b USING (program_id, batch_id) \
                 WHERE a.entry_id = $1 ORDER BY b.earned_at, b.batch_id",
                &[&entry],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    /// Rows in the ledger tables: what "nothing was written" is checked against.
    pub async fn row_counts(&self) -> (i64, i64) {
        let client = self.db.get().await.unwrap();
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM ledger_entries), (SELECT count(*) FROM point_batches)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }

    /// The books tie out for every member: the balance the API reports equals Σ remaining
    /// of the non-expired batches, and Σ of all entries' signed points equals Σ remaining
    /// of all batches.
    pub async fn assert_ties_out(&mut self) {
        let client = self.db.get().await.unwrap();
        let now = self.clock_now();
        let rows = client
            .query(
                "SELECT m.program_id, m.member_id::text, \
                   (SELECT COALESCE(sum(remaining), 0)::bigint FROM point_batches b \
                     WHERE b.program_id = m.program_id AND b.member_id = m.member_id \
                       AND b.expires_at > $1) AS live, \
                   (SELECT COALESCE(sum(remaining), 0)::bigint FROM point_batches b \
                     WHERE b.program_id = m.program_id AND b.member_id = m.member_id) AS held, \
                   (SELECT COALESCE(sum(points), 0)::bigint FROM ledger_entries e \
                     WHERE e.program_id = m.program_id AND e.member_id = m.member_id) AS entries \
                 FROM members m",
                &[&now],
            )
            .await
            .unwrap();
        drop(client);
        for row in rows {
            let program_id: String = row.get(0);
            let member_id: String = row.get(1);
            let (live, held, entries): (i64, i64, i64) = (row.get(2), row.get(3), row.get(4));
            let reported = self
                .ledger
                .get_member(proto::GetMemberRequest {
                    program_id: program_id.clone(),
                    member_id: member_id.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .member
                .unwrap()
                .balance_points;
            assert_eq!(
                reported, live,
                "{program_id}/{member_id}: balance ≠ live batches"
            );
            assert_eq!(entries, held, "{program_id}/{member_id}: entries ≠ batches");
            assert!(live >= 0, "{program_id}/{member_id}: negative balance");
        }
        self.assert_audit_clean().await;
    }

    /// `flash audit` finds nothing wrong with any program.
    pub async fn assert_audit_clean(&self) {
        for program in self.program_ids().await {
            let program = flash_loyalty::domain::ProgramId::parse(&program).unwrap();
            let report = self.service.audit(&program).await.expect("audit");
            assert!(report.is_clean(), "{report}");
        }
    }

    pub async fn program_ids(&self) -> Vec<String> {
        let client = self.db.get().await.unwrap();
        store::programs::list_ids(&**client).await.unwrap()
    }

    /// Runs the expiry sweep as of the test clock's now.
    pub async fn expire(&self) -> flash_loyalty::service::ExpiryOutcome {
        self.service
            .expire_due(self.clock_now())
            .await
            .expect("expiry sweep")
    }
}

/// What a refusal says to a program: its `google.rpc.ErrorInfo` reason and metadata, and
/// the fields its `BadRequest` names.
pub struct Refusal {
    pub reason: String,
    pub metadata: std::collections::HashMap<String, String>,
    pub bad_fields: Vec<String>,
    pub retry: bool,
}

pub fn refusal(status: &tonic::Status) -> Refusal {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let info = details.error_info();
    Refusal {
        reason: info.map(|i| i.reason.clone()).unwrap_or_default(),
        metadata: info.map(|i| i.metadata.clone()).unwrap_or_default(),
        bad_fields: details
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default(),
        retry: details.retry_info().is_some(),
    }
}

/// GET `path` of the test server's HTTP port: (status, content type, body).
pub async fn http_get(address: SocketAddr, path: &str) -> (u16, String, String) {
    http_get_as(address, path, None).await
}

/// GET `path` with `authorization: Bearer <token>` when a token is given.
pub async fn http_get_as(
    address: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<hyper::body::Bytes>>();
    let mut request = hyper::Request::get(format!("http://{address}{path}"));
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Empty::new()).expect("a request");
    let response = client.request(request).await.expect("an HTTP answer");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the body")
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A channel to a server process on `port`, once it listens (within 10 s).
pub async fn connect_when_listening(port: u16) -> Channel {
    let endpoint = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if let Ok(connected) = Channel::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
        {
            return connected;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("nothing listens on {endpoint}")
}
