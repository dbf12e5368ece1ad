//! The report: markdown, printed and written to `<out>/report.md`.
use crate::load::{percentile, Measured, SeedRate};
use crate::pgbench::Baseline;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// One workload at one client count: ours beside pgbench's.
pub struct Cell {
    pub workload: &'static str,
    pub clients: usize,
    /// Ledger entries when the cell started.
    pub history: u64,
    pub ours: Measured,
    /// The server's CPU time (user + system) during our run.
    pub server_cpu: Option<Duration>,
    pub baseline: Result<Baseline, String>,
}

impl Cell {
    pub fn ratio(&self) -> Option<f64> {
        let baseline = self.baseline.as_ref().ok()?;
        (baseline.tps > 0.0).then(|| self.ours.ok_per_second() / baseline.tps)
    }
}

/// A seeding step.
pub struct Seeding {
    pub what: String,
    pub rate: SeedRate,
}

pub struct Report {
    pub command: String,
    pub setup: Vec<(String, String)>,
    pub seeding: Vec<Seeding>,
    pub cells: Vec<Cell>,
    pub peak_rss_kib: Option<u64>,
    pub server_cpu_total: Option<Duration>,
}

fn milliseconds(micros: Option<u64>) -> String {
    micros.map_or("–".into(), |us| format!("{:.1}", us as f64 / 1000.0))
}

fn latencies(measured: &Measured) -> String {
    let sorted = &measured.latencies_us;
    format!(
        "{} / {} / {}",
        milliseconds(percentile(sorted, 50.0)),
        milliseconds(percentile(sorted, 95.0)),
        milliseconds(percentile(sorted, 99.0))
    )
}

fn counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "–".into();
    }
    counts
        .iter()
        .map(|(what, count)| format!("{what}: {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn thousands(value: f64) -> String {
    let whole = value.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# flash-bench report\n\n```text\n{}\n```\n",
            self.command
        );
        for (name, value) in &self.setup {
            let _ = writeln!(out, "- {name}: {value}");
        }
        self.seeding_table(&mut out);
        self.cells_table(&mut out);
        self.history_table(&mut out);
        let _ = writeln!(out, "\n## The server process\n");
        let _ = writeln!(
            out,
            "- peak RSS (VmHWM): {}",
            self.peak_rss_kib.map_or("–".into(), |kib| format!(
                "{:.1} MiB",
                kib as f64 / 1024.0
            ))
        );
        let _ = writeln!(
            out,
            "- CPU time over the whole run (user + system): {}",
            self.server_cpu_total
                .map_or("–".into(), |cpu| format!("{:.1} s", cpu.as_secs_f64()))
        );
        out
    }

    fn seeding_table(&self, out: &mut String) {
        let _ = writeln!(out, "\n## Seeding through gRPC\n");
        let _ = writeln!(out, "| step | items | ok | items/s | errors | time |");
        let _ = writeln!(out, "|---|---:|---:|---:|---|---:|");
        for seeding in &self.seeding {
            let rate = &seeding.rate;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.1} s |",
                seeding.what,
                rate.items,
                rate.ok,
                thousands(rate.per_second()),
                counts(&rate.errors),
                rate.elapsed.as_secs_f64()
            );
        }
    }

    fn cells_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n## Workloads: ours (gRPC, `flash serve`) beside pgbench (the same SQL)\n\n\
             Latencies are p50 / p95 / p99 in ms. Server CPU is the `flash serve` process's \
             user + system time during our run, per OK call.\n"
        );
        let _ = writeln!(
            out,
            "| workload | clients | entries | ours ok/s | pgbench tps | ratio | ours latency | \
             pgbench latency | our errors | pgbench failures | server CPU |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---|---|---|---:|");
        for cell in &self.cells {
            let (tps, baseline_latency, failures) = match &cell.baseline {
                Ok(baseline) => (
                    thousands(baseline.tps),
                    latencies(&baseline.measured),
                    counts(&baseline.failures),
                ),
                Err(error) => ("–".into(), "–".into(), error.clone()),
            };
            let cpu = cell.server_cpu.map_or("–".into(), |cpu| {
                let per_call = cpu.as_secs_f64() * 1e6 / cell.ours.ok.max(1) as f64;
                format!("{:.1} s ({per_call:.0} µs/call)", cpu.as_secs_f64())
            });
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell.workload,
                cell.clients,
                thousands(cell.history as f64),
                thousands(cell.ours.ok_per_second()),
                tps,
                cell.ratio().map_or("–".into(), |r| format!("{r:.2}")),
                latencies(&cell.ours),
                baseline_latency,
                counts(&cell.ours.errors),
                failures,
                cpu
            );
        }
    }

    /// Award and spend at the smallest history beside the largest: the same clients, the
    /// ratio large / small (1.0: the cost does not depend on the history's size).
    fn history_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n## Cost independent of history size?\n\n\
             The same workload and clients at the smallest and the largest history; \
             ratio = large / small.\n"
        );
        let _ = writeln!(
            out,
            "| workload | clients | entries (small → large) | ours ok/s | ours ratio | \
             pgbench tps | pgbench ratio |"
        );
        let _ = writeln!(out, "|---|---:|---|---|---:|---|---:|");
        for workload in ["award", "spend"] {
            let mut clients: Vec<usize> = self
                .cells
                .iter()
                .filter(|c| c.workload == workload)
                .map(|c| c.clients)
                .collect();
            clients.sort_unstable();
            clients.dedup();
            for clients in clients {
                let cells: Vec<&Cell> = self
                    .cells
                    .iter()
                    .filter(|c| c.workload == workload && c.clients == clients)
                    .collect();
                let (Some(small), Some(large)) = (
                    cells.iter().min_by_key(|c| c.history),
                    cells.iter().max_by_key(|c| c.history),
                ) else {
                    continue;
                };
                if small.history == large.history {
                    continue;
                }
                let ours = large.ours.ok_per_second() / small.ours.ok_per_second().max(1e-9);
                let tps = |cell: &Cell| cell.baseline.as_ref().ok().map(|b| b.tps);
                let (baseline, baseline_ratio) = match (tps(small), tps(large)) {
                    (Some(s), Some(l)) => (
                        format!("{} → {}", thousands(s), thousands(l)),
                        format!("{:.2}", l / s.max(1e-9)),
                    ),
                    _ => ("–".into(), "–".into()),
                };
                let _ = writeln!(
                    out,
                    "| {workload} | {clients} | {} → {} | {} → {} | **{ours:.2}** | {baseline} | \
                     {baseline_ratio} |",
                    thousands(small.history as f64),
                    thousands(large.history as f64),
                    thousands(small.ours.ok_per_second()),
                    thousands(large.ours.ok_per_second()),
                );
            }
        }
    }
}
