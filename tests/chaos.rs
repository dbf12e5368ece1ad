//! The chaos harness itself: three fixed seeds, a few seconds each, through the real
//! `flash-chaos` binary (private PostgreSQL cluster, Redis and servers per seed).
//! `make chaos` runs many more seeds for longer.
//!
//! `flash-chaos` is a binary of another workspace member (`testing/chaos`), so Cargo does
//! not build it for this package's tests: `make test` builds it first
//! (`cargo build --workspace --bins`) and it is found next to `flash`, in the same
//! `target/<profile>/`.
use std::path::PathBuf;
use std::process::Command;

/// The `flash-chaos` binary beside this package's `flash`.
fn flash_chaos() -> PathBuf {
    flash_testing_support::process::workspace_binary(env!("CARGO_BIN_EXE_flash"), "flash-chaos")
}

#[test]
fn three_fixed_seeds_survive_faults() {
    let output = Command::new(flash_chaos())
        .args(["--seeds", "1..3", "--seconds", "4"])
        .env("FLASH_BIN", env!("CARGO_BIN_EXE_flash"))
        .output()
        .expect("run flash-chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        output.status.success(),
        "flash-chaos failed ({}); its report is above",
        output.status
    );
}

/// The checks bite: a ledger corrupted behind the server's back fails the run.
#[test]
fn a_corrupted_ledger_fails_the_run() {
    let output = Command::new(flash_chaos())
        .args(["--seed", "1", "--seconds", "2", "--no-faults", "--corrupt"])
        .env("FLASH_BIN", env!("CARGO_BIN_EXE_flash"))
        .output()
        .expect("run flash-chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "the run passed: {stdout}");
    assert!(
        stdout.contains("Σ entries") && stdout.contains("replay with:"),
        "{stdout}"
    );
}
