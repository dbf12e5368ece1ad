//! `make demo` end to end: the real `flash-demo` binary against its own database (a unique
//! `flash_test_demo_*` name, dropped at the end with `--drop`), its own `flash serve` and its
//! own Redis. The walkthrough checks itself; this checks its exit code and the lines a
//! newcomer is promised.
//!
//! `flash-demo` is a binary of another workspace member (`testing/demo`), so Cargo does not
//! build it for this package's tests: `make test` builds it first
//! (`cargo build --workspace --bins`) and it is found next to `flash`, in the same
//! `target/<profile>/`.
use std::path::PathBuf;
use std::process::Command;

/// The `flash-demo` binary beside this package's `flash`.
fn flash_demo() -> PathBuf {
    flash_testing_support::process::workspace_binary(env!("CARGO_BIN_EXE_flash"), "flash-demo")
}

#[test]
fn the_walkthrough_runs_and_ties_out() {
    let database = format!("flash_test_demo_{}", uuid::Uuid::new_v4().simple());
    let mut command = Command::new(flash_demo());
    command
        .args(["--database", &database, "--drop"])
        .env("FLASH_BIN", env!("CARGO_BIN_EXE_flash"));
    if let Ok(admin) = std::env::var("FLASH_TEST_DATABASE_URL") {
        command.env("FLASH_DEMO_ADMIN_URL", admin);
    }
    let output = command.output().expect("run flash-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        output.status.success(),
        "flash-demo failed ({}); its output is above",
        output.status
    );
    for line in [
        // The award's replay: the same entry, nothing written.
        "ok: the replay answered the same entry",
        "with replayed: true and wrote nothing (1 entry before, 1 after)",
        // The FIFO spend's allocation rows.
        "ok: allocation rows: 120 points from demo-award-1's batch, then 30 from demo-award-2's",
        // The cap outage.
        "Award demo-award-3 -> UNAVAILABLE",
        "ok: UNAVAILABLE and nothing written: balance 50 -> 50, entries 3 -> 3",
        "ok: demo-award-3 awarded once after the restart: 1 entry, balance 50 -> 150",
        // The tier upgrade and its event.
        "  tier.upgraded  ",
        "ok: tier.upgraded event: member -> silver",
        // The refund and the audit.
        "ok: refund: 50 points taken back from demo-award-4's batch, balance 300 -> 250",
        "ok: flash audit --program demo exited 0",
        "demo: the ledger ties out",
    ] {
        assert!(
            stdout.contains(line),
            "no line with {line:?} in the output above"
        );
    }
    // The spend's allocation rows, as the table prints them: the batch each point came from.
    let row = |credited_by: &str, points: &str| {
        stdout.lines().any(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            cells.len() == 4 && cells[2] == credited_by && cells[3] == points
        })
    };
    assert!(
        row("demo-award-1", "-120"),
        "no allocation row of -120 from demo-award-1"
    );
    assert!(
        row("demo-award-2", "-30"),
        "no allocation row of -30 from demo-award-2"
    );
    assert!(
        row("demo-award-4", "-50"),
        "no allocation row of -50 from demo-award-4"
    );
}
