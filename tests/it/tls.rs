//! TLS and mutual TLS on the gRPC port: a CA, a server certificate for 127.0.0.1 and
//! localhost, a client certificate from that CA and one from another CA, all made at run
//! time (rcgen) in a temporary directory. Handshakes without or with the wrong client
//! certificate are refused; the right one is served and its subject read by
//! `peer_subject`; the README's TLS grpcurl examples run as written; bad settings stop
//! `flash serve` from starting, naming the setting.
use crate::callers::{python_env, readme_grpcurl_commands, run};
use crate::helpers::*;
use flash_loyalty::app::Application;
use flash_loyalty::config::Settings;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// The PEM files of one test, removed when dropped.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// ca.pem, server.pem/.key (127.0.0.1, localhost), client.pem/.key (CN=marketplace,
    /// O=Acme, from ca.pem) and rogue.pem/.key (the same subject from another CA).
    fn make() -> Pki {
        let dir = std::env::temp_dir().join(format!("flash-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = authority("Flash Test CA");
        let other_ca = authority("Someone Else's CA");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        server.distinguished_name.push(DnType::CommonName, "flash");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = server.signed_by(&server_key, &ca).unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        for (name, issuer) in [("client", &ca), ("rogue", &other_ca)] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            // Most general first, as certificates encode it; RFC 4514 writes it reversed.
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::OrganizationName, "Acme");
            params
                .distinguished_name
                .push(DnType::CommonName, "marketplace");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let certificate = params.signed_by(&key, issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), certificate.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// The settings of a TLS server; with the client CA: mutual TLS.
    fn settings(&self, settings: &mut Settings, mutual: bool) {
        settings.tls_cert = Some(self.path("server.pem"));
        settings.tls_key = Some(self.path("server.key"));
        settings.tls_client_ca = mutual.then(|| self.path("ca.pem"));
    }

    /// A client trusting ca.pem, presenting `identity` (client, rogue) when given.
    fn client(&self, identity: Option<&str>) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.read("ca.pem")))
            .domain_name("localhost");
        if let Some(name) = identity {
            tls = tls.identity(Identity::from_pem(
                self.read(&format!("{name}.pem")),
                self.read(&format!("{name}.key")),
            ));
        }
        tls
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A server of the application with `customize`d settings on its own database (health
/// checks need no table): stopped and its database dropped when dropped.
struct TlsServer {
    address: SocketAddr,
    database_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        drop_database(&self.database_url);
    }
}

fn server_settings(database_url: &str, customize: impl FnOnce(&mut Settings)) -> Settings {
    let mut settings = Settings::defaults();
    settings.database_url = database_url.to_owned();
    settings.redis_url = redis_url();
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.http_listen = String::new();
    settings.contact_hash_key = Some(TEST_CONTACT_KEY.into());
    customize(&mut settings);
    settings
}

async fn serve(customize: impl FnOnce(&mut Settings)) -> TlsServer {
    let database_url = create_database().await;
    let settings = server_settings(&database_url, customize);
    let clock = flash_loyalty::clock::ManualClock::starting_at(start_of_test());
    let app = Application::build(&settings, Arc::new(clock))
        .await
        .expect("build the TLS server");
    assert!(app.tls());
    flash_loyalty::store::migrate(app.pool())
        .await
        .expect("migrate");
    let address = app.local_addr();
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.serve(async {
        let _ = stop.await;
    }));
    TlsServer {
        address,
        database_url,
        shutdown: Some(shutdown),
    }
}

/// Connects with `tls` and asks for the server's health: the answer, or the error of
/// the connection or of the call.
async fn check(address: SocketAddr, tls: ClientTlsConfig) -> Result<i32, String> {
    let channel = Channel::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| format!("connect: {}", chain(&error)))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|answer| answer.into_inner().status)
        .map_err(|status| {
            // The server never answered: no grpc-status came back, only the transport
            // failing under the call.
            assert!(
                status.metadata().get("grpc-status").is_none()
                    && status.metadata().get("content-type").is_none(),
                "a gRPC status from the server: {status:?}"
            );
            format!("call: {status:?} {}", chain(&status))
        })
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn mutual_tls_serves_the_right_certificate_and_refuses_the_others_at_the_handshake() {
    let pki = Pki::make();
    let server = serve(|settings| pki.settings(settings, true)).await;
    assert_eq!(
        check(server.address, pki.client(Some("client"))).await,
        Ok(1)
    );
    let without = check(server.address, pki.client(None)).await.unwrap_err();
    eprintln!("without a client certificate: {without}");
    // TLS 1.3: the client's side of the handshake completes before the server checks the
    // client's certificate, so the refusal reaches the client as the alert under its first
    // call, a transport error; no handler ran.
    assert!(
        without.contains("received fatal alert: CertificateRequired"),
        "{without}"
    );
    let rogue = check(server.address, pki.client(Some("rogue")))
        .await
        .unwrap_err();
    eprintln!("with another CA's certificate: {rogue}");
    assert!(rogue.contains("received fatal alert: UnknownCA"), "{rogue}");
    // Plaintext is not spoken on a TLS port.
    let plaintext = Channel::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        assert!(HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .is_err());
    }
    // The server still serves after the refused handshakes.
    assert_eq!(
        check(server.address, pki.client(Some("client"))).await,
        Ok(1)
    );
}

#[tokio::test]
async fn tls_without_a_client_ca_serves_any_client_that_trusts_the_server() {
    let pki = Pki::make();
    let server = serve(|settings| pki.settings(settings, false)).await;
    assert_eq!(check(server.address, pki.client(None)).await, Ok(1));
    assert_eq!(
        check(server.address, pki.client(Some("rogue"))).await,
        Ok(1)
    );
}

/// `peer_subject` on the requests of a server with the application's TLS configuration:
/// the verified client certificate's subject, most specific attribute first.
#[tokio::test]
async fn peer_subject_is_the_verified_client_certificates_subject() {
    let pki = Pki::make();
    let tls = flash_loyalty::grpc::tls::server_config(
        Some(&pki.path("server.pem")),
        Some(&pki.path("server.key")),
        Some(&pki.path("ca.pem")),
    )
    .unwrap()
    .expect("TLS on");
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (_health, health_service) = tonic_health::server::health_reporter();
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .layer(Record(seen.clone()))
        .add_service(health_service)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let served = tokio::spawn(server);
    assert_eq!(check(address, pki.client(Some("client"))).await, Ok(1));
    served.abort();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some("CN=marketplace,O=Acme".to_owned())]
    );
}

/// A layer recording the peer subject of every request.
#[derive(Clone)]
struct Record(Arc<Mutex<Vec<Option<String>>>>);

impl<S> tower::Layer<S> for Record {
    type Service = Recorded<S>;

    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded {
            inner,
            seen: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Recorded<S> {
    inner: S,
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl<S, B> tower::Service<http::Request<B>> for Recorded<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let subject = flash_loyalty::grpc::tls::peer_subject(&request);
        self.seen.lock().unwrap().push(subject);
        self.inner.call(request)
    }
}

/// The README's TLS section's grpcurl commands, as written (run in the directory of the
/// PEM files it names), against a mutual-TLS server.
#[tokio::test]
async fn the_readme_tls_grpcurl_examples_run_as_written() {
    let venv = python_env();
    let pki = Pki::make();
    let server = serve(|settings| pki.settings(settings, true)).await;
    // The README's client of that certificate.
    let mut add = std::process::Command::new(env!("CARGO_BIN_EXE_flash"));
    add.env("FLASH_DATABASE_URL", &server.database_url)
        .env("FLASH_CONTACT_HASH_KEY", TEST_CONTACT_KEY)
        .env("FLASH_LOG", "warn")
        .args([
            "clients",
            "add",
            "marketplace",
            "--programs",
            "*",
            "--scopes",
            "read",
        ])
        .args(["--cert-subject", "CN=marketplace,O=Acme"]);
    assert!(add.output().unwrap().status.success());
    let commands: Vec<String> = readme_grpcurl_commands()
        .into_iter()
        .filter(|command| command.contains("-cacert"))
        .collect();
    assert!(commands.len() >= 2, "{commands:?}");
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for written in &commands {
        let command = written.replace(
            "localhost:50051",
            &format!("localhost:{}", server.address.port()),
        );
        let mut shell = std::process::Command::new("bash");
        shell
            .args(["-c", &command])
            .env("PATH", &path)
            .current_dir(&pki.dir);
        let output = run(shell).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "README TLS example failed:\n{written}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if written.contains("Health/Check") {
            assert!(stdout.contains("SERVING"), "{stdout}");
        }
    }
    // Without the client certificate grpcurl's handshake is refused.
    let without = commands[0]
        .replace(
            "localhost:50051",
            &format!("localhost:{}", server.address.port()),
        )
        .replace("-cert client.pem -key client.key ", "");
    assert_ne!(&without, &commands[0]);
    let mut shell = std::process::Command::new("bash");
    shell
        .args(["-c", &without])
        .env("PATH", &path)
        .current_dir(&pki.dir);
    let output = run(shell).await;
    assert!(
        !output.status.success(),
        "served without a client certificate"
    );
}

/// Settings that cannot make TLS stop the server from starting, naming the setting.
#[tokio::test]
async fn bad_tls_settings_stop_the_server_from_starting_naming_the_setting() {
    let pki = Pki::make();
    std::fs::write(pki.path("garbage.pem"), "not a PEM file\n").unwrap();
    std::fs::write(
        pki.path("broken.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    type Customize<'a> = Box<dyn Fn(&mut Settings) + 'a>;
    let cases: Vec<(&str, Customize)> = vec![
        (
            "FLASH_TLS_CERT is set but FLASH_TLS_KEY is not",
            Box::new(|s: &mut Settings| {
                s.tls_cert = Some(pki.path("server.pem"));
            }),
        ),
        (
            "FLASH_TLS_KEY is set but FLASH_TLS_CERT is not",
            Box::new(|s: &mut Settings| {
                s.tls_key = Some(pki.path("server.key"));
            }),
        ),
        (
            "FLASH_TLS_CLIENT_CA is set",
            Box::new(|s: &mut Settings| {
                s.tls_client_ca = Some(pki.path("ca.pem"));
            }),
        ),
        (
            "FLASH_TLS_CERT: cannot read",
            Box::new(|s: &mut Settings| {
                pki.settings(s, false);
                s.tls_cert = Some(pki.path("missing.pem"));
            }),
        ),
        (
            "FLASH_TLS_KEY: cannot read",
            Box::new(|s: &mut Settings| {
                pki.settings(s, false);
                s.tls_key = Some(pki.path("missing.key"));
            }),
        ),
        (
            "FLASH_TLS_CERT:",
            Box::new(|s: &mut Settings| {
                pki.settings(s, false);
                s.tls_cert = Some(pki.path("garbage.pem"));
            }),
        ),
        (
            "FLASH_TLS_CERT:",
            Box::new(|s: &mut Settings| {
                pki.settings(s, false);
                s.tls_cert = Some(pki.path("broken.pem"));
            }),
        ),
        (
            "FLASH_TLS_KEY:",
            Box::new(|s: &mut Settings| {
                pki.settings(s, false);
                s.tls_key = Some(pki.path("server.pem"));
            }),
        ),
        (
            "FLASH_TLS_CLIENT_CA:",
            Box::new(|s: &mut Settings| {
                pki.settings(s, true);
                s.tls_client_ca = Some(pki.path("garbage.pem"));
            }),
        ),
        // A key that is not the certificate's: rustls refuses the pair.
        (
            "FLASH_TLS_CERT / FLASH_TLS_KEY",
            Box::new(|s: &mut Settings| {
                pki.settings(s, false);
                s.tls_key = Some(pki.path("client.key"));
            }),
        ),
    ];
    for (expected, customize) in cases {
        let settings = server_settings(&admin_url(), |s| customize(s));
        let clock = flash_loyalty::clock::ManualClock::starting_at(start_of_test());
        let error = match Application::build(&settings, Arc::new(clock)).await {
            Ok(_) => panic!("started with bad TLS settings ({expected})"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.starts_with(expected), "{expected}: {error}");
    }
}

/// With mutual TLS a client certificate whose subject is a client's names that client: no
/// bearer token needed, its scopes and programs apply; a subject that is no client's, or a
/// revoked client's, is UNAUTHENTICATED.
#[tokio::test]
async fn a_client_certificate_names_its_client_without_a_bearer_token() {
    use flash_loyalty::domain::{ClientName, ProgramAccess, Scope, Scopes};
    use flash_loyalty::grpc::proto::programs_client::ProgramsClient;
    let pki = Pki::make();
    let database_url = create_database().await;
    let settings = server_settings(&database_url, |settings| pki.settings(settings, true));
    let clock = flash_loyalty::clock::ManualClock::starting_at(start_of_test());
    let app = Application::build(&settings, Arc::new(clock))
        .await
        .unwrap();
    flash_loyalty::store::migrate(app.pool()).await.unwrap();
    let clients = app.clients().clone();
    let address = app.local_addr();
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.serve(async {
        let _ = stop.await;
    }));
    let _server = TlsServer {
        address,
        database_url,
        shutdown: Some(shutdown),
    };
    let connect = || async {
        let channel = Channel::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(pki.client(Some("client")))
            .unwrap()
            .connect()
            .await
            .unwrap();
        ProgramsClient::new(channel)
    };
    let get = || flash_loyalty::grpc::proto::GetProgramRequest {
        program_id: "acme".into(),
    };
    // No client has the subject yet.
    let status = connect().await.get_program(get()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let name = ClientName::parse("marketplace").unwrap();
    clients
        .add(flash_loyalty::service::NewClientCommand {
            name: name.clone(),
            programs: ProgramAccess::parse(["acme"]).unwrap(),
            scopes: Scopes::Only([Scope::Read].into()),
            cert_subject: Some("CN=marketplace,O=Acme".into()),
            rate_per_second: None,
        })
        .await
        .unwrap();
    let mut programs = connect().await;
    // Authenticated by its certificate: the program does not exist (read scope, its program).
    let status = programs.get_program(get()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    // Its scopes apply.
    let status = programs
        .create_program(flash_loyalty::grpc::proto::CreateProgramRequest {
            program_id: "acme".into(),
            name: "Acme".into(),
            rules: Some(usd_rules()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    clients.revoke(&name).await.unwrap();
    let status = programs.get_program(get()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}
