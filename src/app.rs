//! Wiring: settings → pool, Redis, services → the gRPC server.
use crate::cap::DailyCap;
use crate::clock::Clock;
use crate::config::Settings;
use crate::grpc::limits::{Deadline, InFlight, MessageSize};
use crate::grpc::{self, around, proto};
use crate::service::{Clients, Events, Ledger, Programs};
use crate::store;
use anyhow::Context;
use deadpool_postgres::Pool;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// A built server, bound to its address and ready to serve.
pub struct Application {
    listener: TcpListener,
    /// The HTTP port (graph page), when `FLASH_HTTP_LISTEN` is not empty.
    http_listener: Option<TcpListener>,
    profile_url_template: Option<String>,
    graph_refresh: std::time::Duration,
    /// How often PostgreSQL is probed for the gRPC health service.
    health_interval: std::time::Duration,
    pool: Pool,
    ledger: Ledger,
    programs: Programs,
    clients: Clients,
    clients_refresh: std::time::Duration,
    limits: Limits,
    /// None: plaintext.
    tls: Option<tonic::transport::ServerTlsConfig>,
}

/// The gRPC server's limits (see [`grpc::limits`]).
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_message_bytes: usize,
    max_in_flight: usize,
    default_deadline: std::time::Duration,
}

impl Application {
    /// Connects to PostgreSQL and Redis (lazily: either may still be down) and binds the
    /// listen address (port 0 picks a free one).
    pub async fn build(settings: &Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        // Installs the process's metrics recorder before anything is recorded.
        crate::telemetry::metrics::handle();
        let contact_key = settings.contact_key()?;
        let tls = settings.tls()?;
        let pool = store::connect_pool(
            &settings.database_url,
            settings.db_pool_size,
            settings.session_limits(),
        )?;
        let cap = DailyCap::connect(
            &settings.redis_url,
            &settings.redis_prefix,
            settings.redis_timeout(),
        )
        .context("FLASH_REDIS_URL")?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let http_listener = match settings.http_address()? {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding {address} (FLASH_HTTP_LISTEN)"))?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            http_listener,
            profile_url_template: settings.profile_url_template.clone(),
            graph_refresh: std::time::Duration::from_secs(settings.graph_refresh_seconds),
            health_interval: settings.health_interval(),
            ledger: Ledger::new(pool.clone(), cap, clock.clone())
                .with_contact_key(contact_key)
                .with_batch_max(settings.max_batch_items),
            programs: Programs::new(pool.clone(), clock.clone()),
            clients: settings.clients(pool.clone(), clock)?,
            clients_refresh: settings.clients_refresh(),
            pool,
            limits: Limits {
                max_message_bytes: settings.max_message_bytes(),
                max_in_flight: settings.max_in_flight(),
                default_deadline: settings.default_deadline(),
            },
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The HTTP port's address, when it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn programs(&self) -> &Programs {
        &self.programs
    }

    /// The API's clients, for tests that create their own.
    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    /// The ledger use cases, for workers and tests that drive them directly.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Whether the gRPC port speaks TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` resolves, then lets in-flight calls finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.ErrorInfo, BadRequest, RetryInfo: tools decode the error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?
            .max_decoding_message_size(self.limits.max_message_bytes);
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.ErrorInfo, BadRequest, RetryInfo: tools decode the error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?
            .max_decoding_message_size(self.limits.max_message_bytes);
        let (health, health_service) = tonic_health::server::health_reporter();
        let health_service =
            health_service.max_decoding_message_size(self.limits.max_message_bytes);
        for service in DATABASE_SERVICES {
            health
                .set_service_status(service, tonic_health::ServingStatus::Serving)
                .await;
        }
        let database_watch = tokio::spawn(watch_database(
            self.ledger.clone(),
            health,
            self.health_interval,
        ));
        let events = Events::new(self.pool.clone(), self.ledger.clock());
        let grpc_address = self.local_addr();
        // One shutdown for both ports.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = move |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|&stop| stop).await;
        };
        let http = match self.http_listener {
            Some(listener) => {
                let router = crate::http::router(crate::http::HttpState {
                    ledger: self.ledger.clone(),
                    events: events.clone(),
                    profile_url_template: self.profile_url_template,
                    clients: self.clients.clone(),
                });
                tracing::info!(address = %listener.local_addr()?, "serving HTTP");
                let stopped = until_stopped(stopped.clone());
                Some(tokio::spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(stopped)
                        .await
                }))
            }
            None => None,
        };
        let watcher = tokio::spawn(
            self.ledger
                .clone()
                .watch_graph_snapshots(self.graph_refresh),
        );
        if let Err(error) = self.clients.refresh().await {
            tracing::warn!(error = %error, "reading the clients failed; they are read on first use");
        }
        let clients_watch = tokio::spawn(self.clients.clone().watch(self.clients_refresh));
        let shutdown = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        tracing::info!(address = %grpc_address, tls = self.tls.is_some(), "serving gRPC");
        let limits = self.limits;
        let max = limits.max_message_bytes;
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            server = server
                .tls_config(tls)
                .context("FLASH_TLS_CERT / FLASH_TLS_KEY")?;
        }
        let served = server
            // Outermost first: the span covers the metering too, and both see the calls
            // the limits refuse.
            .layer(around::layer(grpc::observe::RpcSpan))
            .layer(around::layer(grpc::metered::Metered))
            .layer(around::layer(Deadline::new(limits.default_deadline)))
            .layer(around::layer(MessageSize::new(max)))
            // Authenticated before a permit is taken: a flood of refused calls never holds
            // the permits the clients' calls need.
            .layer(around::layer(grpc::auth::Authenticate::new(self.clients)))
            .layer(around::layer(InFlight::new(limits.max_in_flight)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                proto::programs_server::ProgramsServer::new(grpc::ProgramsApi::new(self.programs))
                    .max_decoding_message_size(max),
            )
            .add_service(
                proto::tiers_server::TiersServer::new(grpc::TiersApi::new(self.ledger.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(
                proto::referrals_server::ReferralsServer::new(grpc::ReferralsApi::new(
                    self.ledger.clone(),
                ))
                .max_decoding_message_size(max),
            )
            .add_service(
                proto::events_server::EventsServer::new(grpc::EventsApi::new(events))
                    .max_decoding_message_size(max),
            )
            .add_service(
                proto::graph_server::GraphServer::new(grpc::GraphApi::new(self.ledger.clone()))
                    .max_decoding_message_size(max),
            )
            .add_service(
                proto::ledger_server::LedgerServer::new(grpc::LedgerApi::new(self.ledger))
                    .max_decoding_message_size(max),
            )
            .serve_with_incoming_shutdown(
                // No Nagle: a response's frames go out at once, not after the peer's
                // delayed ACK.
                TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
            .context("gRPC server failed");
        watcher.abort();
        clients_watch.abort();
        database_watch.abort();
        if let Some(http) = http {
            http.await
                .context("the HTTP server panicked")?
                .context("HTTP server failed")?;
        }
        served
    }
}

/// The services every call of which needs PostgreSQL: NOT_SERVING while it is unreachable.
/// The server itself (the empty service name) stays SERVING.
const DATABASE_SERVICES: [&str; 6] = [
    <proto::ledger_server::LedgerServer<grpc::LedgerApi> as NamedService>::NAME,
    <proto::programs_server::ProgramsServer<grpc::ProgramsApi> as NamedService>::NAME,
    <proto::tiers_server::TiersServer<grpc::TiersApi> as NamedService>::NAME,
    <proto::events_server::EventsServer<grpc::EventsApi> as NamedService>::NAME,
    <proto::referrals_server::ReferralsServer<grpc::ReferralsApi> as NamedService>::NAME,
    <proto::graph_server::GraphServer<grpc::GraphApi> as NamedService>::NAME,
];

/// Probes PostgreSQL every `interval` and turns the database-backed services NOT_SERVING
/// while it does not answer, SERVING again when it does. Redis is not probed here: without
/// it only capped awards are refused (`/ready` reports that).
async fn watch_database(ledger: Ledger, health: HealthReporter, interval: std::time::Duration) {
    let mut serving = true;
    loop {
        let up = ledger.postgres_up().await;
        if up != serving {
            let status = if up {
                tracing::info!("PostgreSQL answers again: the ledger is serving");
                ServingStatus::Serving
            } else {
                tracing::warn!("PostgreSQL is unreachable: the ledger is not serving");
                ServingStatus::NotServing
            };
            for service in DATABASE_SERVICES {
                health.set_service_status(service, status).await;
            }
            serving = up;
        }
        tokio::time::sleep(interval).await;
    }
}
