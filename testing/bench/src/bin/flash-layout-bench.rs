//! `flash-layout-bench`: our referral-graph layout (`flash_loyalty::domain::layout`) beside
//! igraph's Fruchterman–Reingold, d3-force and Graphviz sfdp, on the very same graph. A
//! benchmark, never a pass/fail test.
//!
//! It generates a synthetic referral forest (preferential attachment, fixed seed), writes
//! it to `<out>/graph/forest-<n>.txt` (first line `n`, then `a b` per edge), and lays it
//! out with each contender in a child process of its own: ours (re-executing this binary
//! with `--only ours`, once per `--threads` value), igraph `layout_fruchterman_reingold(
//! grid=True)` through Python (a venv at `<out>/venv`, created with `pip install igraph`
//! when missing), d3-force (`node_modules/d3-force` of the repository, from `npm ci`:
//! forceManyBody, forceLink, forceCenter, 300 ticks) and sfdp when it is on `PATH`. Each
//! child reads the file, times the layout alone (file reading and writing excluded),
//! writes its coordinates to `<out>/graph/coords-<name>-<n>.txt` and reports its wall
//! time and peak resident set (its own `VmHWM` / `ru_maxrss` / `maxRSS`, so interpreters
//! count their runtime too). sfdp is timed from outside (file parsing included) under
//! `/usr/bin/time -v`.
//!
//! Every layout is then scored by the same code:
//! - **stress**: normalised stress over `--pairs` node pairs drawn with a fixed seed (a
//!   node uniformly among the nodes of components with at least two nodes, then a second
//!   node of the same component). With `d` the graph distance (BFS) and `e` the Euclidean
//!   distance, and weights `1/d²`, the optimal scale is `s = Σ(e/d) / Σ(e²/d²)` and
//!   `stress = (1/P)·Σ((s·e − d)/d)²`: scale-invariant, 0 for a perfect embedding.
//! - **overlap**: node diameter `= 0.25 ×` the layout's median edge length (the same rule
//!   for every layout, so it is scale-invariant); a pair overlaps when its two nodes are
//!   closer than one diameter (counted with a grid). Reported as the share of nodes in at
//!   least one overlapping pair, and the number of overlapping pairs.
//! - **edge CV**: the coefficient of variation (std / mean) of edge lengths.
//!
//! The report goes to stdout and `<out>/layout-report.md`. Run from the repository root:
//!
//! ```text
//! cargo build --release -p flash-bench --bin flash-layout-bench
//! ./target/release/flash-layout-bench [--nodes 100000] [--baselines igraph,d3,sfdp]
//!                                     [--threads 1,2] [--pairs 2000] [--seed 1]
//!                                     [--iterations N] [--polish-iterations N]
//!                                     [--d3-ticks 300] [--out target/bench]
//! ```
//! d3-force needs minutes at 100,000 nodes (about 8 on this machine): leave it out with
//! `--baselines igraph,sfdp` for a quick run.
use anyhow::{bail, ensure, Context};
use clap::Parser;
use flash_loyalty::domain::layout::{layout, LayoutParams, SplitMix64};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(
    name = "flash-layout-bench",
    about = "Our referral-graph layout beside igraph, d3-force and sfdp"
)]
struct Cli {
    /// Members (nodes) of the synthetic referral forest.
    #[arg(long, default_value_t = 100_000)]
    nodes: usize,
    /// Seed of the synthetic forest.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Baselines to run, among igraph, d3 and sfdp (sfdp only when on PATH).
    #[arg(long, value_delimiter = ',', default_value = "igraph,d3,sfdp")]
    baselines: Vec<String>,
    /// Thread counts ours runs with; all must give the same coordinates.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Node pairs sampled for the stress.
    #[arg(long, default_value_t = 2_000)]
    pairs: usize,
    /// Our force steps per level (`LayoutParams::iterations`); its default when unset.
    #[arg(long)]
    iterations: Option<u32>,
    /// Our overlap-removal steps (`LayoutParams::polish_iterations`); its default when unset.
    #[arg(long)]
    polish_iterations: Option<u32>,
    /// Ticks of the d3-force simulation.
    #[arg(long, default_value_t = 300)]
    d3_ticks: u32,
    /// Where the graph, the scripts, the coordinates and the report go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Internal: lay out `--graph` with one layout only (`ours`), write `--coords`.
    #[arg(long, hide = true)]
    only: Option<String>,
    #[arg(long, hide = true)]
    graph: Option<PathBuf>,
    #[arg(long, hide = true)]
    coords: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.only.as_deref() {
        Some("ours") => child_ours(&cli),
        Some(other) => Err(anyhow::anyhow!("unknown --only {other}")),
        None => run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flash-layout-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The layout's own splitmix64, so the graph and the pair sample never change with a crate.
trait Draws {
    fn below(&mut self, bound: usize) -> usize;
    fn chance(&mut self, p: f64) -> bool;
}

impl Draws for SplitMix64 {
    fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }
}

/// Members join one by one; one in ten joins unreferred (a new tree), the others are
/// recruited by an existing member chosen with odds `recruits + 1` (preferential
/// attachment): a few hubs with hundreds of recruits, most members with none, many small
/// trees beside a giant one.
fn referral_forest(n: usize, seed: u64) -> Vec<(u32, u32)> {
    let mut rng = SplitMix64(seed);
    let mut tickets: Vec<u32> = Vec::with_capacity(2 * n);
    let mut edges = Vec::with_capacity(n);
    for v in 0..n as u32 {
        if v > 0 && !rng.chance(0.1) {
            let referrer = tickets[rng.below(tickets.len())];
            edges.push((referrer, v));
            tickets.push(referrer);
        }
        tickets.push(v);
    }
    edges
}

fn write_graph(path: &Path, n: usize, edges: &[(u32, u32)]) -> anyhow::Result<()> {
    let mut text = String::with_capacity(16 * edges.len() + 16);
    writeln!(text, "{n}")?;
    for (a, b) in edges {
        writeln!(text, "{a} {b}")?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn read_graph(path: &Path) -> anyhow::Result<(usize, Vec<(u32, u32)>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let n: usize = lines.next().context("empty graph file")?.trim().parse()?;
    let mut edges = Vec::new();
    for line in lines {
        let mut parts = line.split_whitespace();
        if let (Some(a), Some(b)) = (parts.next(), parts.next()) {
            edges.push((a.parse()?, b.parse()?));
        }
    }
    Ok((n, edges))
}

fn read_coords(path: &Path, n: usize) -> anyhow::Result<Vec<[f64; 2]>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::with_capacity(n);
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let x: f64 = parts.next().context("no x")?.parse()?;
        let y: f64 = parts.next().context("no y")?.parse()?;
        out.push([x, y]);
    }
    ensure!(
        out.len() == n,
        "{}: {} coordinates for {n} nodes",
        path.display(),
        out.len()
    );
    Ok(out)
}

/// This process's peak resident set, from `/proc/self/status`.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `--only ours`: one timed layout in a process of its own.
fn child_ours(cli: &Cli) -> anyhow::Result<()> {
    let graph = cli.graph.as_deref().context("--graph")?;
    let coords = cli.coords.as_deref().context("--coords")?;
    let threads = *cli.threads.first().context("--threads")?;
    let (n, edges) = read_graph(graph)?;
    let defaults = LayoutParams::default();
    let params = LayoutParams {
        threads,
        iterations: cli.iterations.unwrap_or(defaults.iterations),
        polish_iterations: cli.polish_iterations.unwrap_or(defaults.polish_iterations),
        ..defaults
    };
    let start = Instant::now();
    let result = layout(n, &edges, 1, &params);
    let seconds = start.elapsed().as_secs_f64();
    let mut text = String::with_capacity(24 * n);
    for (x, y) in result.x.iter().zip(&result.y) {
        writeln!(text, "{x} {y}")?;
    }
    std::fs::write(coords, text)?;
    println!("LAYOUT_SECONDS {seconds}");
    if let Some(kib) = peak_rss_kib() {
        println!("PEAK_RSS_KIB {kib}");
    }
    Ok(())
}

const IGRAPH_SCRIPT: &str = r#"# Written by flash-layout-bench: igraph's Fruchterman-Reingold on one edge-list file.
import resource, sys, time
import igraph

graph_path, coords_path = sys.argv[1], sys.argv[2]
with open(graph_path) as f:
    n = int(f.readline())
    edges = [tuple(map(int, line.split())) for line in f if line.strip()]
g = igraph.Graph(n=n, edges=edges)
start = time.perf_counter()
layout = g.layout_fruchterman_reingold(grid=True)
seconds = time.perf_counter() - start
with open(coords_path, "w") as f:
    for x, y in layout.coords:
        f.write(f"{x!r} {y!r}\n")
print("LAYOUT_SECONDS", seconds)
print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"#;

/// The d3 script; `D3_FORCE_PATH` and `D3_TICKS` are replaced when written.
const D3_SCRIPT: &str = r#"// Written by flash-layout-bench: d3-force on one edge-list file.
import { readFileSync, writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
const { forceSimulation, forceManyBody, forceLink, forceCenter } = await import(
  pathToFileURL(D3_FORCE_PATH).href
);

const [graphPath, coordsPath] = process.argv.slice(2);
const lines = readFileSync(graphPath, "utf8").split("\n");
const n = parseInt(lines[0], 10);
const nodes = Array.from({ length: n }, (_, index) => ({ index }));
const links = [];
for (let i = 1; i < lines.length; i++) {
  const parts = lines[i].trim().split(/\s+/);
  if (parts.length >= 2) links.push({ source: +parts[0], target: +parts[1] });
}
const start = performance.now();
const simulation = forceSimulation(nodes)
  .force("charge", forceManyBody())
  .force("link", forceLink(links))
  .force("center", forceCenter())
  .stop();
simulation.tick(D3_TICKS);
const seconds = (performance.now() - start) / 1000;
writeFileSync(coordsPath, nodes.map((node) => `${node.x} ${node.y}`).join("\n") + "\n");
console.log("LAYOUT_SECONDS", seconds);
console.log("PEAK_RSS_KIB", process.resourceUsage().maxRSS);
"#;

/// One contender's run.
struct Run {
    name: String,
    seconds: f64,
    peak_rss_kib: Option<u64>,
    coords: Vec<[f64; 2]>,
    note: Option<String>,
}

/// Runs `command`, echoing its stderr; reads `LAYOUT_SECONDS` and `PEAK_RSS_KIB` lines.
fn run_child(mut command: Command) -> anyhow::Result<(f64, Option<u64>)> {
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {stdout}",
        output.status
    );
    let mut seconds = None;
    let mut rss = None;
    for line in stdout.lines() {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("LAYOUT_SECONDS"), Some(value)) => seconds = Some(value.parse::<f64>()?),
            (Some("PEAK_RSS_KIB"), Some(value)) => rss = Some(value.parse::<f64>()? as u64),
            _ => {}
        }
    }
    Ok((seconds.context("no LAYOUT_SECONDS line")?, rss))
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn ensure_igraph(out: &Path) -> anyhow::Result<PathBuf> {
    let venv = out.join("venv");
    let python = venv.join("bin/python");
    if !python.is_file() {
        eprintln!("creating {} ...", venv.display());
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
        ensure!(status.success(), "python3 -m venv failed");
    }
    let has_igraph = Command::new(&python)
        .args(["-c", "import igraph"])
        .stderr(Stdio::null())
        .status()?
        .success();
    if !has_igraph {
        eprintln!("pip install igraph into {} ...", venv.display());
        let status = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "igraph"])
            .status()?;
        ensure!(status.success(), "pip install igraph failed");
    }
    Ok(python)
}

fn ensure_d3() -> anyhow::Result<PathBuf> {
    let entry = std::env::current_dir()?.join("node_modules/d3-force/dist/d3-force.mjs");
    if !entry.is_file() {
        eprintln!("npm ci (for d3-force) ...");
        let status = Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .status()
            .context("npm ci: run from the repository root")?;
        ensure!(status.success(), "npm ci failed");
    }
    ensure!(
        entry.is_file(),
        "no {}: run from the repository root",
        entry.display()
    );
    Ok(entry)
}

fn run_ours(cli: &Cli, graph: &Path, n: usize, threads: usize) -> anyhow::Result<Run> {
    let dir = graph.parent().context("graph dir")?;
    let coords = dir.join(format!("coords-ours-t{threads}-{n}.txt"));
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["--only", "ours", "--threads", &threads.to_string()])
        .arg("--graph")
        .arg(graph)
        .arg("--coords")
        .arg(&coords);
    if let Some(iterations) = cli.iterations {
        command.args(["--iterations", &iterations.to_string()]);
    }
    if let Some(polish) = cli.polish_iterations {
        command.args(["--polish-iterations", &polish.to_string()]);
    }
    let (seconds, peak_rss_kib) = run_child(command)?;
    Ok(Run {
        name: format!(
            "ours ({threads} thread{})",
            if threads == 1 { "" } else { "s" }
        ),
        seconds,
        peak_rss_kib,
        coords: read_coords(&coords, n)?,
        note: None,
    })
}

fn run_igraph(cli: &Cli, graph: &Path, n: usize) -> anyhow::Result<Run> {
    let python = ensure_igraph(&cli.out)?;
    let dir = graph.parent().context("graph dir")?;
    let script = dir.join("igraph_layout.py");
    std::fs::write(&script, IGRAPH_SCRIPT)?;
    let coords = dir.join(format!("coords-igraph-{n}.txt"));
    let mut command = Command::new(python);
    command.arg(&script).arg(graph).arg(&coords);
    let (seconds, peak_rss_kib) = run_child(command)?;
    Ok(Run {
        name: "igraph FR (grid)".into(),
        seconds,
        peak_rss_kib,
        coords: read_coords(&coords, n)?,
        note: None,
    })
}

fn run_d3(cli: &Cli, graph: &Path, n: usize) -> anyhow::Result<Run> {
    let entry = ensure_d3()?;
    let dir = graph.parent().context("graph dir")?;
    let script = dir.join("d3_layout.mjs");
    let path = serde_json::to_string(&entry.to_string_lossy())?;
    std::fs::write(
        &script,
        D3_SCRIPT
            .replace("D3_FORCE_PATH", &path)
            .replace("D3_TICKS", &cli.d3_ticks.to_string()),
    )?;
    let coords = dir.join(format!("coords-d3-{n}.txt"));
    let mut command = Command::new("node");
    command.arg(&script).arg(graph).arg(&coords);
    let (seconds, peak_rss_kib) = run_child(command)?;
    Ok(Run {
        name: format!("d3-force ({} ticks)", cli.d3_ticks),
        seconds,
        peak_rss_kib,
        coords: read_coords(&coords, n)?,
        note: None,
    })
}

fn run_sfdp(graph: &Path, n: usize, edges: &[(u32, u32)]) -> anyhow::Result<Option<Run>> {
    let Some(sfdp) = on_path("sfdp") else {
        return Ok(None);
    };
    let dir = graph.parent().context("graph dir")?;
    let dot = dir.join(format!("forest-{n}.dot"));
    let mut text = String::from("graph G {\n");
    for v in 0..n {
        writeln!(text, "{v};")?;
    }
    for (a, b) in edges {
        writeln!(text, "{a} -- {b};")?;
    }
    text.push_str("}\n");
    std::fs::write(&dot, text)?;
    let plain = dir.join(format!("coords-sfdp-{n}.plain"));
    let time = Path::new("/usr/bin/time");
    let mut command = if time.is_file() {
        let mut command = Command::new(time);
        command.arg("-v").arg(&sfdp);
        command
    } else {
        Command::new(&sfdp)
    };
    command.arg("-Tplain").arg("-o").arg(&plain).arg(&dot);
    let start = Instant::now();
    let output = command.stdin(Stdio::null()).output()?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(output.status.success(), "sfdp failed: {}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let peak_rss_kib = stderr
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("Maximum resident set size (kbytes):")
        })
        .and_then(|value| value.trim().parse().ok());
    let mut coords = vec![[0.0; 2]; n];
    for line in std::fs::read_to_string(&plain)?.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() >= 4 && parts[0] == "node" {
            let v: usize = parts[1].trim_matches('"').parse()?;
            if v < n {
                coords[v] = [parts[2].parse()?, parts[3].parse()?];
            }
        }
    }
    Ok(Some(Run {
        name: "sfdp".into(),
        seconds,
        peak_rss_kib,
        coords,
        note: Some("time includes sfdp's parsing and output".into()),
    }))
}

/// The graph's facts the scores need.
struct Graph {
    n: usize,
    adjacency: Vec<Vec<u32>>,
    edges: Vec<(u32, u32)>,
    component: Vec<u32>,
    members: Vec<Vec<u32>>,
}

impl Graph {
    fn new(n: usize, edges: &[(u32, u32)]) -> Self {
        let mut adjacency = vec![Vec::new(); n];
        let mut clean = Vec::new();
        for &(a, b) in edges {
            if a != b && (a as usize) < n && (b as usize) < n {
                adjacency[a as usize].push(b);
                adjacency[b as usize].push(a);
                clean.push((a, b));
            }
        }
        let mut component = vec![u32::MAX; n];
        let mut members = Vec::new();
        for start in 0..n {
            if component[start] != u32::MAX {
                continue;
            }
            let id = members.len() as u32;
            let mut nodes = vec![start as u32];
            component[start] = id;
            let mut head = 0;
            while head < nodes.len() {
                let v = nodes[head] as usize;
                head += 1;
                for &u in &adjacency[v] {
                    if component[u as usize] == u32::MAX {
                        component[u as usize] = id;
                        nodes.push(u);
                    }
                }
            }
            members.push(nodes);
        }
        Self {
            n,
            adjacency,
            edges: clean,
            component,
            members,
        }
    }

    fn hops(&self, from: u32, to: u32, seen: &mut [u32], stamp: u32) -> u32 {
        let mut queue = VecDeque::from([(from, 0u32)]);
        seen[from as usize] = stamp;
        while let Some((v, d)) = queue.pop_front() {
            if v == to {
                return d;
            }
            for &u in &self.adjacency[v as usize] {
                if seen[u as usize] != stamp {
                    seen[u as usize] = stamp;
                    queue.push_back((u, d + 1));
                }
            }
        }
        u32::MAX
    }

    /// `count` pairs in the same component with their graph distance; a fixed seed.
    fn sample_pairs(&self, count: usize) -> Vec<(u32, u32, u32)> {
        let candidates: Vec<u32> = (0..self.n as u32)
            .filter(|&v| self.members[self.component[v as usize] as usize].len() >= 2)
            .collect();
        if candidates.is_empty() {
            return Vec::new();
        }
        let mut rng = SplitMix64(0x05EE_D0F5_7E55);
        let mut seen = vec![0u32; self.n];
        let mut pairs = Vec::with_capacity(count);
        for k in 0..count {
            let u = candidates[rng.below(candidates.len())];
            let group = &self.members[self.component[u as usize] as usize];
            let mut v = u;
            while v == u {
                v = group[rng.below(group.len())];
            }
            let d = self.hops(u, v, &mut seen, k as u32 + 1);
            pairs.push((u, v, d));
        }
        pairs
    }
}

struct Scores {
    stress: f64,
    overlap_nodes: f64,
    overlap_pairs: u64,
    edge_cv: f64,
}

fn distance(a: [f64; 2], b: [f64; 2]) -> f64 {
    ((a[0] - b[0]) * (a[0] - b[0]) + (a[1] - b[1]) * (a[1] - b[1])).sqrt()
}

fn score(graph: &Graph, pairs: &[(u32, u32, u32)], coords: &[[f64; 2]]) -> Scores {
    // Stress with weights 1/d² and the optimal scale.
    let (mut num, mut den) = (0.0, 0.0);
    for &(u, v, d) in pairs {
        let e = distance(coords[u as usize], coords[v as usize]);
        let d = f64::from(d);
        num += e / d;
        den += e * e / (d * d);
    }
    let s = if den > 0.0 { num / den } else { 0.0 };
    let mut stress = 0.0;
    for &(u, v, d) in pairs {
        let e = distance(coords[u as usize], coords[v as usize]);
        let d = f64::from(d);
        stress += ((s * e - d) / d).powi(2);
    }
    stress /= pairs.len().max(1) as f64;

    // Edge lengths: median (for the diameter) and CV.
    let mut lengths: Vec<f64> = graph
        .edges
        .iter()
        .map(|&(a, b)| distance(coords[a as usize], coords[b as usize]))
        .collect();
    lengths.sort_by(f64::total_cmp);
    let median = lengths.get(lengths.len() / 2).copied().unwrap_or(1.0);
    let mean = lengths.iter().sum::<f64>() / lengths.len().max(1) as f64;
    let var = lengths.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lengths.len().max(1) as f64;
    let edge_cv = if mean > 0.0 { var.sqrt() / mean } else { 0.0 };

    // Overlaps: pairs closer than the diameter, with a grid of diameter-wide cells.
    let diameter = if median > 0.0 { 0.25 * median } else { 1e-9 };
    let mut cells: Vec<(i64, i64, u32)> = coords
        .iter()
        .enumerate()
        .map(|(v, p)| {
            (
                (p[0] / diameter).floor() as i64,
                (p[1] / diameter).floor() as i64,
                v as u32,
            )
        })
        .collect();
    cells.sort_unstable();
    let find = |cx: i64, cy: i64| -> &[(i64, i64, u32)] {
        let lo = cells.partition_point(|c| (c.0, c.1) < (cx, cy));
        let hi = cells.partition_point(|c| (c.0, c.1) <= (cx, cy));
        &cells[lo..hi]
    };
    let mut overlapping = vec![false; coords.len()];
    let mut overlap_pairs = 0u64;
    for &(cx, cy, v) in &cells {
        for dy in -1..=1 {
            for dx in -1..=1 {
                for &(_, _, u) in find(cx + dx, cy + dy) {
                    if u > v && distance(coords[u as usize], coords[v as usize]) < diameter {
                        overlap_pairs += 1;
                        overlapping[u as usize] = true;
                        overlapping[v as usize] = true;
                    }
                }
            }
        }
    }
    let overlap_nodes =
        overlapping.iter().filter(|&&o| o).count() as f64 / coords.len().max(1) as f64;
    Scores {
        stress,
        overlap_nodes,
        overlap_pairs,
        edge_cv,
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    ensure!(cli.nodes >= 2, "--nodes must be at least 2");
    ensure!(
        !cli.threads.is_empty() && cli.threads.iter().all(|&t| t >= 1),
        "--threads needs counts of at least 1"
    );
    for baseline in &cli.baselines {
        if !matches!(baseline.as_str(), "igraph" | "d3" | "sfdp" | "") {
            bail!("unknown baseline {baseline}: igraph, d3 or sfdp");
        }
    }
    let dir = cli.out.join("graph");
    std::fs::create_dir_all(&dir)?;
    let n = cli.nodes;
    let graph_path = dir.join(format!("forest-{n}.txt"));
    write_graph(&graph_path, n, &referral_forest(n, cli.seed))?;
    let (n, edges) = read_graph(&graph_path)?;
    let graph = Graph::new(n, &edges);
    let pairs = graph.sample_pairs(cli.pairs);

    let mut runs: Vec<Run> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for &threads in &cli.threads {
        eprintln!("ours, {threads} thread(s) ...");
        runs.push(run_ours(cli, &graph_path, n, threads)?);
    }
    let ours: Vec<&Run> = runs.iter().collect();
    let identical = ours.windows(2).all(|w| {
        w[0].coords
            .iter()
            .zip(&w[1].coords)
            .all(|(a, b)| a[0].to_bits() == b[0].to_bits() && a[1].to_bits() == b[1].to_bits())
    });
    notes.push(format!(
        "ours with threads {:?}: coordinates {}",
        cli.threads,
        if identical {
            "identical bit for bit"
        } else {
            "DIFFER"
        }
    ));
    for baseline in &cli.baselines {
        let result = match baseline.as_str() {
            "igraph" => {
                eprintln!("igraph ...");
                run_igraph(cli, &graph_path, n).map(Some)
            }
            "d3" => {
                eprintln!("d3-force ...");
                run_d3(cli, &graph_path, n).map(Some)
            }
            "sfdp" => {
                let found = run_sfdp(&graph_path, n, &edges);
                if matches!(found, Ok(None)) {
                    notes.push("sfdp: not on PATH, skipped".into());
                }
                found
            }
            _ => Ok(None),
        };
        match result {
            Ok(Some(run)) => runs.push(run),
            Ok(None) => {}
            Err(error) => notes.push(format!("{baseline}: failed: {error:#}")),
        }
    }

    let sizes: Vec<usize> = graph.members.iter().map(Vec::len).collect();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let isolated = sizes.iter().filter(|&&s| s == 1).count();
    let max_degree = graph.adjacency.iter().map(Vec::len).max().unwrap_or(0);
    let mut report = String::new();
    writeln!(report, "# Layout benchmark\n")?;
    writeln!(
        report,
        "Graph `{}`: {n} nodes, {} edges, {} components (largest {largest}, {isolated} isolated \
         nodes), max degree {max_degree}; forest seed {}. Stress over {} sampled pairs.\n",
        graph_path.display(),
        graph.edges.len(),
        sizes.len(),
        cli.seed,
        pairs.len(),
    )?;
    writeln!(
        report,
        "| layout | time (s) | × ours | peak RSS (MiB) | stress | overlap (% nodes) | overlapping pairs | edge CV |"
    )?;
    writeln!(report, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    let reference = runs.first().map(|r| r.seconds).unwrap_or(1.0);
    for run in &runs {
        let s = score(&graph, &pairs, &run.coords);
        let rss = run
            .peak_rss_kib
            .map(|k| format!("{:.0}", k as f64 / 1024.0))
            .unwrap_or_else(|| "n/a".into());
        writeln!(
            report,
            "| {} | {:.2} | {:.2} | {rss} | {:.4} | {:.2} | {} | {:.3} |",
            run.name,
            run.seconds,
            run.seconds / reference,
            s.stress,
            100.0 * s.overlap_nodes,
            s.overlap_pairs,
            s.edge_cv,
        )?;
        if let Some(note) = &run.note {
            notes.push(format!("{}: {note}", run.name));
        }
    }
    writeln!(report)?;
    for note in &notes {
        writeln!(report, "- {note}")?;
    }
    writeln!(
        report,
        "\nTime: the layout call alone, in a child process per layout (file I/O excluded). \
         × ours: time / the first ours row. Peak RSS: the child's own peak resident set \
         (interpreters included). Stress: weights 1/d², optimal scale s = Σ(e/d)/Σ(e²/d²), \
         stress = mean((s·e − d)/d)², d = hops, e = Euclidean distance. Overlap: node \
         diameter = 0.25 × median edge length; nodes in at least one pair closer than that. \
         Edge CV: std/mean of edge lengths."
    )?;
    print!("{report}");
    let path = cli.out.join("layout-report.md");
    std::fs::write(&path, &report)?;
    eprintln!("report written to {}", path.display());
    Ok(())
}
