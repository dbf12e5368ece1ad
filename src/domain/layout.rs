//! A deterministic force-directed layout of the referral graph (issue 19): our own
//! algorithm, no layout library, no I/O.
//!
//! # Algorithm
//! 1. **Clean-up.** Edges become undirected; self loops, duplicates and edges naming a
//!    node `>= n` are dropped. The graph is split into connected components, each keeping
//!    its nodes in ascending index order.
//! 2. **One layout per component**, in its own coordinates. One node sits at the origin,
//!    two nodes lie on a horizontal segment. Larger components get a *multilevel*
//!    spring-electrical layout (after Hu 2005, the scheme of Graphviz's sfdp):
//!    - *Coarsening.* Leaves fold into their neighbour (a hub and its recruits become one
//!      node), then a matching in index order merges each remaining node with its first
//!      free neighbour; repeated until a level has at most `COARSEST` (24) nodes or stops
//!      shrinking.
//!    - *Placement.* The coarsest level starts at positions drawn from the seeded PRNG in
//!      a square of side `√n`; each finer level starts from its parent's position, the
//!      non-representative members of a group at a seeded random offset of `K/2`.
//!    - *Force steps.* On every level [`LayoutParams::iterations`] steps move all nodes at
//!      once (Jacobi style). Forces: attraction `d²/K` along edges; repulsion `C·K³/d²`
//!      between all pairs, approximated by a Barnes–Hut quadtree (opening angle
//!      [`LayoutParams::theta`]) above `EXACT_MAX` (48) nodes — an inverse-square repulsion
//!      acts mostly locally, so big subtrees are not pushed to the far end of long edges;
//!      and a gentle gravity `g·r` towards the component's centre. A node moves along its
//!      force by at most the current step, which cools quadratically to `K/50` from
//!      `max(K, √n·K/50)` (a quarter of the square's side on the coarsest level).
//!    - *Scale and polish.* The layout is scaled so the median edge has
//!      [`LayoutParams::edge_length`]; then up to [`LayoutParams::polish_iterations`]
//!      steps push apart every pair of nodes closer than the node diameter (plus 15%), the
//!      diameter taken relative to the current median edge (`node_diameter /
//!      edge_length` of it), found with a uniform grid.
//! 3. **Packing.** Components are sorted by size (descending), then by smallest node
//!    index, and their bounding boxes placed left to right in rows of a roughly square
//!    area, [`LayoutParams::component_gap`] apart (shelf packing).
//!
//! Costs: per force step `O(n log n)` for the quadtree (built in `O(n log n)` too), the
//! levels together about twice the finest; the polish is `O(n)` per step.
//!
//! # Determinism
//! The result is a pure function of `(n, edges, seed, params)` — `threads` excluded: equal
//! bit for bit on every run, machine and thread count. What makes it so:
//! - no clock, no OS randomness, no hash maps: every loop runs in index order (or the
//!   quadtree's order, itself a function of the positions); randomness is splitmix64,
//!   seeded from `seed` and the component's smallest node index;
//! - arithmetic is IEEE-754 `f64` with `+ − × ÷` and `sqrt` only, each correctly rounded
//!   on every platform: no `mul_add`, no `sin`/`cos`/`powf`/`exp` (whose last bits vary
//!   between libms); Rust neither fuses nor reorders floating-point operations by itself;
//! - sums run sequentially in a fixed order. Threads only split the *nodes* of a step:
//!   each node's force is computed whole by one thread, by the same operations in the
//!   same order, and written to its own slot; sums across nodes (centroid, median) stay
//!   on the calling thread. Whole components may run on different threads, since no
//!   value crosses from one component to another.
//! - The quadtree stops splitting at `MAX_DEPTH` (32 levels), so identical points share
//!   one leaf, where they push each other apart in a direction drawn from the pair's
//!   indices.

use std::thread;

/// Node positions of one layout, index = node index.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Horizontal coordinates.
    pub x: Vec<f32>,
    /// Vertical coordinates.
    pub y: Vec<f32>,
}

/// The knobs of [`layout`]. [`LayoutParams::default`] suits the referral snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct LayoutParams {
    /// Force steps on each level of the multilevel hierarchy (the finest included). More
    /// untangles big components further; fewer leaves them denser.
    pub iterations: u32,
    /// Worker threads; 0 counts as 1. The result does not depend on it.
    pub threads: usize,
    /// The median edge of every component gets this length.
    pub edge_length: f32,
    /// The diameter of a node, in the units of `edge_length`: the polish pushes apart
    /// nodes closer than this (relative to the median edge).
    pub node_diameter: f32,
    /// Barnes–Hut opening angle: a quadtree cell of side `s` at distance `d` counts as one
    /// body when `s / d < theta`. Larger is faster and coarser.
    pub theta: f32,
    /// At most this many overlap-removal steps at the end.
    pub polish_iterations: u32,
    /// Gap between the bounding boxes of packed components.
    pub component_gap: f32,
}

impl Default for LayoutParams {
    fn default() -> Self {
        Self {
            iterations: 45,
            threads: 1,
            edge_length: 4.0,
            node_diameter: 1.0,
            theta: 0.9,
            polish_iterations: 40,
            component_gap: 4.0,
        }
    }
}

/// Lays out `n` nodes `0..n` joined by the undirected `edges` (duplicates, self loops and
/// edges naming a node `>= n` are ignored); `seed` draws the initial positions. Never
/// panics; every coordinate is finite.
pub fn layout(n: usize, edges: &[(u32, u32)], seed: u64, params: &LayoutParams) -> Layout {
    let settings = Settings::from_params(params);
    let graph = Csr::undirected(n, edges);
    let components = components(&graph);

    // Big components use every thread for their force steps, one after another; the
    // others are laid out whole, several at a time.
    let mut placed: Vec<Vec<[f64; 2]>> = vec![Vec::new(); components.len()];
    let mut rest = Vec::new();
    for (c, nodes) in components.iter().enumerate() {
        if settings.threads > 1 && nodes.len() >= PARALLEL_MIN {
            placed[c] = layout_component(&graph, nodes, seed, &settings, settings.threads);
        } else {
            rest.push(c);
        }
    }
    let laid = map_in_threads(&rest, settings.threads, |&c| {
        layout_component(&graph, &components[c], seed, &settings, 1)
    });
    for (&c, positions) in rest.iter().zip(laid) {
        placed[c] = positions;
    }
    pack(n, &components, &placed, settings.gap)
}

/// Levels of at most this many nodes use exact `O(n²)` repulsion instead of the quadtree.
const EXACT_MAX: usize = 48;
/// Levels of at least this many nodes split their force steps over the threads.
const PARALLEL_MIN: usize = 4096;
/// Coarsening stops at this many nodes.
const COARSEST: usize = 24;
/// Coarsening stops when a level would keep more than this share of its nodes.
const MIN_SHRINK: f64 = 0.85;
/// At most this many levels.
const MAX_LEVELS: usize = 64;
/// The natural length of the force model (the result is scaled afterwards).
const K: f64 = 1.0;
/// Repulsion strength, Hu's `C`.
const REPULSION: f64 = 0.2;
/// Gravity towards the component's centre, per unit of distance.
const GRAVITY: f64 = 0.005;
/// The last step of a level's cooling schedule.
const FINAL_STEP: f64 = 0.02 * K;
/// The first step of every level but the coarsest, over `√n`, at least `K`.
const FINE_STEP_PER_ROOT: f64 = 0.02;
/// Quadtree cells with at most this many bodies are leaves.
const LEAF_BODIES: usize = 8;
/// The quadtree never gets deeper than this: identical points end in one leaf.
const MAX_DEPTH: u32 = 32;
/// Squared distances below this count as coincident points.
const COINCIDENT: f64 = 1e-18;
/// The polish keeps nodes this much farther apart than the node diameter.
const OVERLAP_MARGIN: f64 = 1.15;

/// [`LayoutParams`], checked and widened to `f64`.
struct Settings {
    iterations: u32,
    threads: usize,
    edge_length: f64,
    /// Node diameter over edge length.
    diameter_ratio: f64,
    theta2: f64,
    polish_iterations: u32,
    gap: f64,
}

impl Settings {
    fn from_params(params: &LayoutParams) -> Self {
        let positive = |value: f32, fallback: f64| {
            let value = f64::from(value);
            if value.is_finite() && value > 0.0 {
                value
            } else {
                fallback
            }
        };
        let edge_length = positive(params.edge_length, 4.0);
        let diameter = positive(params.node_diameter, edge_length * 0.25);
        let theta = f64::from(params.theta);
        let theta = if theta.is_finite() {
            theta.clamp(0.0, 2.0)
        } else {
            0.9
        };
        let gap = f64::from(params.component_gap);
        Self {
            iterations: params.iterations,
            threads: params.threads.clamp(1, 256),
            edge_length,
            diameter_ratio: diameter / edge_length,
            theta2: theta * theta,
            polish_iterations: params.polish_iterations,
            gap: if gap.is_finite() && gap >= 0.0 {
                gap
            } else {
                edge_length
            },
        }
    }
}

/// splitmix64: a tiny, fully specified PRNG (the same stream on every platform); also what
/// the layout benchmark draws its graph and pair sample from.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 bits of the stream.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1): the top 53 bits, converted exactly.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniformly random unit vector, by rejection from the square (no trigonometry).
    fn unit_vector(&mut self) -> [f64; 2] {
        loop {
            let a = self.next_f64() * 2.0 - 1.0;
            let b = self.next_f64() * 2.0 - 1.0;
            let r2 = a * a + b * b;
            if r2 > 1e-4 && r2 <= 1.0 {
                let r = r2.sqrt();
                return [a / r, b / r];
            }
        }
    }
}

/// An undirected graph in compressed sparse rows; neighbours in ascending order.
struct Csr {
    offsets: Vec<usize>,
    targets: Vec<u32>,
}

impl Csr {
    /// From `(a, b)` pairs with `a < b < n`, sorted, without duplicates.
    fn from_sorted_pairs(n: usize, pairs: &[(u32, u32)]) -> Self {
        let mut offsets = vec![0usize; n + 1];
        for &(a, b) in pairs {
            offsets[a as usize + 1] += 1;
            offsets[b as usize + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut targets = vec![0u32; offsets[n]];
        // Every pair (y, v) with y < v comes before the pairs (v, x): each list ascends.
        for &(a, b) in pairs {
            targets[fill[a as usize]] = b;
            fill[a as usize] += 1;
            targets[fill[b as usize]] = a;
            fill[b as usize] += 1;
        }
        Self { offsets, targets }
    }

    fn undirected(n: usize, edges: &[(u32, u32)]) -> Self {
        let mut pairs: Vec<(u32, u32)> = edges
            .iter()
            .filter(|&&(a, b)| a != b && (a as usize) < n && (b as usize) < n)
            .map(|&(a, b)| (a.min(b), a.max(b)))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        Self::from_sorted_pairs(n, &pairs)
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    fn neighbours(&self, v: usize) -> &[u32] {
        &self.targets[self.offsets[v]..self.offsets[v + 1]]
    }

    fn degree(&self, v: usize) -> usize {
        self.offsets[v + 1] - self.offsets[v]
    }

    /// Calls `f(a, b)` once per edge, `a < b`, in ascending order.
    fn for_each_edge(&self, mut f: impl FnMut(usize, usize)) {
        for a in 0..self.len() {
            for &b in self.neighbours(a) {
                if (b as usize) > a {
                    f(a, b as usize);
                }
            }
        }
    }
}

/// The connected components, each in ascending node order, ordered by smallest node.
fn components(graph: &Csr) -> Vec<Vec<u32>> {
    let n = graph.len();
    let mut seen = vec![false; n];
    let mut out = Vec::new();
    let mut queue: Vec<u32> = Vec::new();
    for start in 0..n {
        if seen[start] {
            continue;
        }
        seen[start] = true;
        queue.clear();
        queue.push(start as u32);
        let mut head = 0;
        while head < queue.len() {
            let v = queue[head] as usize;
            head += 1;
            for &u in graph.neighbours(v) {
                if !seen[u as usize] {
                    seen[u as usize] = true;
                    queue.push(u);
                }
            }
        }
        let mut nodes = queue.clone();
        nodes.sort_unstable();
        out.push(nodes);
    }
    out
}

/// Runs `f` on every item, on up to `threads` threads; results in item order.
fn map_in_threads<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    if threads <= 1 || items.len() < 2 {
        return items.iter().map(f).collect();
    }
    // Contiguous runs of items; which thread runs an item changes no result.
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|run| scope.spawn(move || run.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| match handle.join() {
                Ok(results) => results,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// Fills `out[k] = f(k)` for every slot, splitting the slots into contiguous runs over up
/// to `threads` threads. Each slot is computed and written by exactly one thread.
fn for_each_slot<T: Send>(out: &mut [T], threads: usize, f: impl Fn(usize) -> T + Sync) {
    if threads <= 1 || out.len() < PARALLEL_MIN {
        for (k, slot) in out.iter_mut().enumerate() {
            *slot = f(k);
        }
        return;
    }
    let chunk = out.len().div_ceil(threads);
    let f = &f;
    thread::scope(|scope| {
        for (run, slots) in out.chunks_mut(chunk).enumerate() {
            scope.spawn(move || {
                for (k, slot) in slots.iter_mut().enumerate() {
                    *slot = f(run * chunk + k);
                }
            });
        }
    });
}

/// Lays out one component; positions in the order of `nodes`.
fn layout_component(
    graph: &Csr,
    nodes: &[u32],
    seed: u64,
    settings: &Settings,
    threads: usize,
) -> Vec<[f64; 2]> {
    let half = settings.edge_length * 0.5;
    match nodes.len() {
        0 => return Vec::new(),
        1 => return vec![[0.0, 0.0]],
        2 => return vec![[-half, 0.0], [half, 0.0]],
        _ => {}
    }
    // Local indices: each node's rank in the (sorted) component.
    let mut pairs = Vec::with_capacity(nodes.len());
    for (a, &v) in nodes.iter().enumerate() {
        for &u in graph.neighbours(v as usize) {
            if u > v {
                if let Ok(b) = nodes.binary_search(&u) {
                    pairs.push((a as u32, b as u32));
                }
            }
        }
    }
    pairs.sort_unstable();
    let local = Csr::from_sorted_pairs(nodes.len(), &pairs);
    let mut rng = SplitMix64(seed ^ u64::from(nodes[0]).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let (mut xs, mut ys) = multilevel(&local, &mut rng, settings, threads);
    scale_to_edge_length(&local, &mut xs, &mut ys, settings.edge_length);
    polish(&local, &mut xs, &mut ys, settings, threads);
    xs.into_iter().zip(ys).map(|(x, y)| [x, y]).collect()
}

/// A coarser level: its graph, and for each node of the finer level its coarse parent
/// and whether it stands exactly at the parent's position.
struct Coarse {
    graph: Csr,
    parent: Vec<u32>,
    representative: Vec<bool>,
}

/// The multilevel force layout of a connected graph, in the units of `K`.
fn multilevel(
    graph: &Csr,
    rng: &mut SplitMix64,
    settings: &Settings,
    threads: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut levels: Vec<Coarse> = Vec::new();
    while levels.len() < MAX_LEVELS {
        let finer = levels.last().map_or(graph, |level| &level.graph);
        match coarsen(finer) {
            Some(coarse) => levels.push(coarse),
            None => break,
        }
    }
    let coarsest = levels.last().map_or(graph, |level| &level.graph);
    let side = K * (coarsest.len() as f64).sqrt();
    let mut xs = Vec::with_capacity(graph.len());
    let mut ys = Vec::with_capacity(graph.len());
    for _ in 0..coarsest.len() {
        xs.push((rng.next_f64() - 0.5) * side);
        ys.push((rng.next_f64() - 0.5) * side);
    }
    let mut tree = QuadTree::default();
    relax(
        coarsest,
        &mut xs,
        &mut ys,
        side * 0.25 + K,
        settings,
        threads,
        &mut tree,
    );
    for depth in (0..levels.len()).rev() {
        let finer = if depth == 0 {
            graph
        } else {
            &levels[depth - 1].graph
        };
        let level = &levels[depth];
        let (cx, cy) = (std::mem::take(&mut xs), std::mem::take(&mut ys));
        for v in 0..finer.len() {
            let p = level.parent[v] as usize;
            if level.representative[v] {
                xs.push(cx[p]);
                ys.push(cy[p]);
            } else {
                let [ux, uy] = rng.unit_vector();
                xs.push(cx[p] + ux * 0.5 * K);
                ys.push(cy[p] + uy * 0.5 * K);
            }
        }
        // Big levels must spread further than small ones: the first step grows with √n.
        let step0 = K.max(FINE_STEP_PER_ROOT * (finer.len() as f64).sqrt() * K);
        relax(finer, &mut xs, &mut ys, step0, settings, threads, &mut tree);
    }
    (xs, ys)
}

/// The next coarser level, or `None` when `graph` is small or would not shrink enough.
fn coarsen(graph: &Csr) -> Option<Coarse> {
    let n = graph.len();
    if n <= COARSEST {
        return None;
    }
    const FREE: u32 = u32::MAX;
    // The representative of each node's group.
    let mut group = vec![FREE; n];
    // Leaves fold into their neighbour (two leaves together: into the smaller index).
    for v in 0..n {
        if graph.degree(v) == 1 {
            let u = graph.neighbours(v)[0] as usize;
            let host = if graph.degree(u) == 1 { u.min(v) } else { u };
            group[v] = host as u32;
            group[host] = host as u32;
        }
    }
    // Then a matching of the rest, in index order, each with its first free neighbour.
    for v in 0..n {
        if group[v] == FREE {
            group[v] = v as u32;
            if let Some(&u) = graph
                .neighbours(v)
                .iter()
                .find(|&&u| group[u as usize] == FREE)
            {
                group[u as usize] = v as u32;
            }
        }
    }
    // Coarse indices in the order of the representatives.
    let mut index = vec![FREE; n];
    let mut count = 0u32;
    for v in 0..n {
        if group[v] as usize == v {
            index[v] = count;
            count += 1;
        }
    }
    let coarse_n = count as usize;
    if coarse_n as f64 > MIN_SHRINK * n as f64 {
        return None;
    }
    let parent: Vec<u32> = group.iter().map(|&g| index[g as usize]).collect();
    let mut pairs = Vec::new();
    graph.for_each_edge(|a, b| {
        let (pa, pb) = (parent[a], parent[b]);
        if pa != pb {
            pairs.push((pa.min(pb), pa.max(pb)));
        }
    });
    pairs.sort_unstable();
    pairs.dedup();
    Some(Coarse {
        graph: Csr::from_sorted_pairs(coarse_n, &pairs),
        representative: (0..n).map(|v| group[v] as usize == v).collect(),
        parent,
    })
}

/// `iterations` force steps on one level, the step cooling from `step0` to [`FINAL_STEP`].
fn relax(
    graph: &Csr,
    xs: &mut [f64],
    ys: &mut [f64],
    step0: f64,
    settings: &Settings,
    threads: usize,
    tree: &mut QuadTree,
) {
    let n = graph.len();
    let iterations = settings.iterations;
    let mut forces = vec![[0.0f64; 2]; n];
    let mut ordered = vec![[0.0f64; 2]; n];
    for it in 0..iterations {
        // The centre, summed in index order.
        let (mut sx, mut sy) = (0.0, 0.0);
        for v in 0..n {
            sx += xs[v];
            sy += ys[v];
        }
        let (cx, cy) = (sx / n as f64, sy / n as f64);
        let (px, py) = (&*xs, &*ys);
        // Everything but the repulsion, which comes in as `(rx, ry)` of unit strength.
        let force = |i: usize, [rx, ry]: [f64; 2]| {
            let (xi, yi) = (px[i], py[i]);
            let (mut fx, mut fy) = (0.0, 0.0);
            for &j in graph.neighbours(i) {
                let dx = px[j as usize] - xi;
                let dy = py[j as usize] - yi;
                let d = (dx * dx + dy * dy).sqrt();
                fx += dx * d / K;
                fy += dy * d / K;
            }
            fx += REPULSION * rx;
            fy += REPULSION * ry;
            fx -= GRAVITY * (xi - cx);
            fy -= GRAVITY * (yi - cy);
            [fx, fy]
        };
        if n <= EXACT_MAX {
            for_each_slot(&mut forces, threads, |i| {
                force(i, exact_repulsion(i, px, py))
            });
        } else {
            // In the quadtree's order, for locality; each force lands in its node's slot.
            tree.build(px, py);
            let (tree, theta2) = (&*tree, settings.theta2);
            for_each_slot(&mut ordered, threads, |k| {
                let body = tree.bodies[k];
                force(
                    body.id as usize,
                    tree.repulsion(body.id, body.x, body.y, theta2),
                )
            });
            for (body, f) in tree.bodies.iter().zip(&ordered) {
                forces[body.id as usize] = *f;
            }
        }
        let t = 1.0 - f64::from(it) / f64::from(iterations);
        let step = FINAL_STEP + (step0 - FINAL_STEP) * t * t;
        for v in 0..n {
            let [fx, fy] = forces[v];
            let f2 = fx * fx + fy * fy;
            if f2 > 0.0 {
                let f = f2.sqrt();
                let scale = if f > step { step / f } else { 1.0 };
                xs[v] += fx * scale;
                ys[v] += fy * scale;
            }
        }
    }
}

/// The repulsion on node `i` from every other node, of unit strength.
fn exact_repulsion(i: usize, xs: &[f64], ys: &[f64]) -> [f64; 2] {
    let (xi, yi) = (xs[i], ys[i]);
    let (mut fx, mut fy) = (0.0, 0.0);
    for j in 0..xs.len() {
        if j != i {
            let [rx, ry] = pair_repulsion(i, j, xi - xs[j], yi - ys[j], 1.0);
            fx += rx;
            fy += ry;
        }
    }
    [fx, fy]
}

/// The repulsion `m·K³/d²` of mass `m` at offset `(dx, dy)`; coincident points get
/// [`apart`].
#[inline]
fn pair_repulsion(i: usize, j: usize, dx: f64, dy: f64, m: f64) -> [f64; 2] {
    let d2 = dx * dx + dy * dy;
    if d2 < COINCIDENT {
        return apart(i, j, m);
    }
    let f = m * K * K * K / (d2 * d2.sqrt());
    [dx * f, dy * f]
}

/// A push of length `m` for node `i` away from the coincident node `j`: a direction drawn
/// from the pair's indices (no trigonometry), opposite for `j`, so a heap of identical
/// points spreads in every direction.
fn apart(i: usize, j: usize, m: f64) -> [f64; 2] {
    let pair = ((i.min(j) as u64) << 32) ^ (i.max(j) as u64);
    let h = SplitMix64(pair).next_u64();
    let a = (h & 0xFFFF) as f64 - 32767.5;
    let b = ((h >> 16) & 0xFFFF) as f64 - 32767.5;
    let scale = if i < j { -m } else { m } / (a * a + b * b).sqrt();
    [a * scale, b * scale]
}

/// A Barnes–Hut quadtree in depth-first order: a cell's first child follows it and
/// `next` skips its whole subtree, so a traversal needs no stack. Rebuilt every step.
#[derive(Default)]
struct QuadTree {
    cells: Vec<Cell>,
    /// The bodies, grouped by leaf in depth-first order.
    bodies: Vec<Body>,
    scratch: Vec<Body>,
}

#[derive(Clone, Copy)]
struct Cell {
    /// Centre of mass.
    cx: f64,
    cy: f64,
    /// The number of bodies below.
    mass: f64,
    /// The side, squared.
    side2: f64,
    /// The first cell after this one's subtree.
    next: u32,
    /// A leaf's bodies; empty for an inner cell.
    start: u32,
    end: u32,
}

#[derive(Clone, Copy)]
struct Body {
    x: f64,
    y: f64,
    id: u32,
}

impl QuadTree {
    fn build(&mut self, xs: &[f64], ys: &[f64]) {
        self.cells.clear();
        self.bodies.clear();
        let (mut x0, mut y0, mut x1, mut y1) = (xs[0], ys[0], xs[0], ys[0]);
        for (i, (&x, &y)) in xs.iter().zip(ys).enumerate() {
            self.bodies.push(Body { x, y, id: i as u32 });
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        let mut side = (x1 - x0).max(y1 - y0);
        if !(side > 0.0 && side.is_finite()) {
            side = 1.0;
        }
        // A little slack so the largest coordinate falls inside.
        side *= 1.0 + 1e-9;
        self.scratch.resize(self.bodies.len(), self.bodies[0]);
        self.split(0, self.bodies.len(), x0, y0, side, 0);
    }

    /// Adds the cell of `bodies[lo..hi]`, a square at `(x0, y0)`, and its subtree.
    fn split(&mut self, lo: usize, hi: usize, x0: f64, y0: f64, side: f64, depth: u32) {
        let me = self.cells.len();
        self.cells.push(Cell {
            cx: 0.0,
            cy: 0.0,
            mass: 0.0,
            side2: side * side,
            next: 0,
            start: lo as u32,
            end: hi as u32,
        });
        let (mut mx, mut my, mut m) = (0.0, 0.0, 0.0);
        if hi - lo <= LEAF_BODIES || depth >= MAX_DEPTH {
            for b in &self.bodies[lo..hi] {
                mx += b.x;
                my += b.y;
                m += 1.0;
            }
        } else {
            let half = side * 0.5;
            let (midx, midy) = (x0 + half, y0 + half);
            let quadrant = |b: &Body| usize::from(b.x >= midx) + 2 * usize::from(b.y >= midy);
            // A stable counting sort of the bodies into their quadrants.
            let mut starts = [lo; 5];
            for b in &self.bodies[lo..hi] {
                starts[quadrant(b) + 1] += 1;
            }
            for q in 0..4 {
                starts[q + 1] += starts[q] - lo;
            }
            let mut fill = starts;
            for k in lo..hi {
                let b = self.bodies[k];
                let q = quadrant(&b);
                self.scratch[fill[q]] = b;
                fill[q] += 1;
            }
            self.bodies[lo..hi].copy_from_slice(&self.scratch[lo..hi]);
            for q in 0..4 {
                if starts[q + 1] > starts[q] {
                    let qx = if q & 1 == 1 { midx } else { x0 };
                    let qy = if q & 2 == 2 { midy } else { y0 };
                    self.split(starts[q], starts[q + 1], qx, qy, half, depth + 1);
                }
            }
            let mut child = me + 1;
            while child < self.cells.len() {
                let c = self.cells[child];
                mx += c.mass * c.cx;
                my += c.mass * c.cy;
                m += c.mass;
                child = c.next as usize;
            }
            self.cells[me].start = 0;
            self.cells[me].end = 0;
        }
        let next = self.cells.len() as u32;
        let cell = &mut self.cells[me];
        cell.mass = m;
        cell.cx = mx / m;
        cell.cy = my / m;
        cell.next = next;
    }

    /// The approximate repulsion, of unit strength, on body `id` at `(x, y)`.
    fn repulsion(&self, id: u32, x: f64, y: f64, theta2: f64) -> [f64; 2] {
        let (mut fx, mut fy) = (0.0, 0.0);
        let mut c = 0;
        while c < self.cells.len() {
            let cell = &self.cells[c];
            let dx = x - cell.cx;
            let dy = y - cell.cy;
            let d2 = dx * dx + dy * dy;
            if cell.side2 < theta2 * d2 {
                // Far enough: the whole cell as one body at its centre of mass.
                let f = cell.mass * K * K * K / (d2 * d2.sqrt());
                fx += dx * f;
                fy += dy * f;
                c = cell.next as usize;
            } else if cell.end > cell.start {
                for b in &self.bodies[cell.start as usize..cell.end as usize] {
                    if b.id != id {
                        let [rx, ry] =
                            pair_repulsion(id as usize, b.id as usize, x - b.x, y - b.y, 1.0);
                        fx += rx;
                        fy += ry;
                    }
                }
                c = cell.next as usize;
            } else {
                c += 1;
            }
        }
        [fx, fy]
    }
}

/// The median edge length (the upper median), or `None` without edges.
fn median_edge_length(graph: &Csr, xs: &[f64], ys: &[f64]) -> Option<f64> {
    let mut lengths = Vec::new();
    graph.for_each_edge(|a, b| {
        let (dx, dy) = (xs[a] - xs[b], ys[a] - ys[b]);
        lengths.push((dx * dx + dy * dy).sqrt());
    });
    if lengths.is_empty() {
        return None;
    }
    let mid = lengths.len() / 2;
    let (_, median, _) = lengths.select_nth_unstable_by(mid, f64::total_cmp);
    Some(*median)
}

/// Scales the positions so the median edge has length `target`.
fn scale_to_edge_length(graph: &Csr, xs: &mut [f64], ys: &mut [f64], target: f64) {
    let Some(median) = median_edge_length(graph, xs, ys) else {
        return;
    };
    if median > 1e-12 {
        let scale = target / median;
        xs.iter_mut().for_each(|x| *x *= scale);
        ys.iter_mut().for_each(|y| *y *= scale);
    }
}

/// Pushes apart the nodes closer than the node diameter (plus the margin), the diameter
/// taken relative to the current median edge; stops early once no pair is that close.
fn polish(graph: &Csr, xs: &mut [f64], ys: &mut [f64], settings: &Settings, threads: usize) {
    let n = xs.len();
    let mut pushes = vec![[0.0f64; 2]; n];
    let mut grid = Grid::default();
    for _ in 0..settings.polish_iterations {
        let Some(median) = median_edge_length(graph, xs, ys) else {
            return;
        };
        let reach = median * settings.diameter_ratio * OVERLAP_MARGIN;
        if reach.is_nan() || reach <= 1e-12 {
            return;
        }
        grid.build(xs, ys, reach);
        let (px, py, grid) = (&*xs, &*ys, &grid);
        for_each_slot(&mut pushes, threads, |i| {
            let (xi, yi) = (px[i], py[i]);
            let (mut fx, mut fy) = (0.0, 0.0);
            grid.for_each_near(xi, yi, |j| {
                let (dx, dy) = (xi - px[j], yi - py[j]);
                let d2 = dx * dx + dy * dy;
                if j != i && d2 < reach * reach {
                    if d2 < COINCIDENT {
                        let [ax, ay] = apart(i, j, 0.25 * reach);
                        fx += ax;
                        fy += ay;
                    } else {
                        let d = d2.sqrt();
                        let push = 0.25 * (reach - d) / d;
                        fx += dx * push;
                        fy += dy * push;
                    }
                }
            });
            [fx, fy]
        });
        let cap = 0.5 * reach;
        let mut moved = false;
        for v in 0..n {
            let [fx, fy] = pushes[v];
            let f2 = fx * fx + fy * fy;
            if f2 > 0.0 {
                moved = true;
                let f = f2.sqrt();
                let scale = if f > cap { cap / f } else { 1.0 };
                xs[v] += fx * scale;
                ys[v] += fy * scale;
            }
        }
        if !moved {
            return;
        }
    }
}

/// A uniform grid over points: each cell lists its points in index order.
#[derive(Default)]
struct Grid {
    x0: f64,
    y0: f64,
    cell: f64,
    width: usize,
    height: usize,
    starts: Vec<usize>,
    items: Vec<u32>,
}

impl Grid {
    /// Cells at least `reach` wide (wider when the points are sparse, so there are never
    /// many more cells than points).
    fn build(&mut self, xs: &[f64], ys: &[f64], reach: f64) {
        let n = xs.len();
        let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        for (&x, &y) in xs.iter().zip(ys) {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        let limit = 4 * n + 16;
        let mut cell = reach;
        loop {
            let width = ((x1 - x0) / cell) as usize + 1;
            let height = ((y1 - y0) / cell) as usize + 1;
            if width.saturating_mul(height) <= limit {
                (self.width, self.height) = (width, height);
                break;
            }
            cell *= 2.0;
        }
        (self.x0, self.y0, self.cell) = (x0, y0, cell);
        let cells = self.width * self.height;
        self.starts.clear();
        self.starts.resize(cells + 1, 0);
        for (&x, &y) in xs.iter().zip(ys) {
            let c = self.cell_of(x, y);
            self.starts[c + 1] += 1;
        }
        for c in 0..cells {
            self.starts[c + 1] += self.starts[c];
        }
        let mut fill = self.starts.clone();
        self.items.clear();
        self.items.resize(n, 0);
        for (i, (&x, &y)) in xs.iter().zip(ys).enumerate() {
            let c = self.cell_of(x, y);
            self.items[fill[c]] = i as u32;
            fill[c] += 1;
        }
    }

    fn coords(&self, x: f64, y: f64) -> (usize, usize) {
        // `as usize` saturates: a point left of the grid lands in column 0.
        let gx = ((x - self.x0) / self.cell) as usize;
        let gy = ((y - self.y0) / self.cell) as usize;
        (gx.min(self.width - 1), gy.min(self.height - 1))
    }

    fn cell_of(&self, x: f64, y: f64) -> usize {
        let (gx, gy) = self.coords(x, y);
        gy * self.width + gx
    }

    /// Calls `f` for every point in the 3×3 cells around `(x, y)`, in a fixed order.
    fn for_each_near(&self, x: f64, y: f64, mut f: impl FnMut(usize)) {
        let (gx, gy) = self.coords(x, y);
        for cy in gy.saturating_sub(1)..=(gy + 1).min(self.height - 1) {
            for cx in gx.saturating_sub(1)..=(gx + 1).min(self.width - 1) {
                let c = cy * self.width + cx;
                for &j in &self.items[self.starts[c]..self.starts[c + 1]] {
                    f(j as usize);
                }
            }
        }
    }
}

/// Places each component's layout by its bounding box, in rows (shelf packing).
fn pack(n: usize, components: &[Vec<u32>], placed: &[Vec<[f64; 2]>], gap: f64) -> Layout {
    struct Boxed {
        component: usize,
        x0: f64,
        y0: f64,
        w: f64,
        h: f64,
    }
    let mut boxes: Vec<Boxed> = placed
        .iter()
        .enumerate()
        .map(|(component, positions)| {
            let first = positions.first().copied().unwrap_or([0.0, 0.0]);
            let (mut x0, mut y0, mut x1, mut y1) = (first[0], first[1], first[0], first[1]);
            for p in positions {
                x0 = x0.min(p[0]);
                x1 = x1.max(p[0]);
                y0 = y0.min(p[1]);
                y1 = y1.max(p[1]);
            }
            Boxed {
                component,
                x0,
                y0,
                w: x1 - x0,
                h: y1 - y0,
            }
        })
        .collect();
    // Biggest first; equal sizes by smallest node (components are already in that order,
    // and the sort is stable).
    boxes.sort_by_key(|b| std::cmp::Reverse(components[b.component].len()));
    let mut area = 0.0;
    let mut widest: f64 = 0.0;
    for b in &boxes {
        area += (b.w + gap) * (b.h + gap);
        widest = widest.max(b.w);
    }
    let row_width = widest.max(area.sqrt());
    let mut layout = Layout {
        x: vec![0.0; n],
        y: vec![0.0; n],
    };
    let (mut cursor_x, mut row_y, mut row_h) = (0.0f64, 0.0f64, 0.0f64);
    for b in &boxes {
        if cursor_x > 0.0 && cursor_x + b.w > row_width {
            cursor_x = 0.0;
            row_y += row_h + gap;
            row_h = 0.0;
        }
        let (dx, dy) = (cursor_x - b.x0, row_y - b.y0);
        for (&v, p) in components[b.component].iter().zip(&placed[b.component]) {
            layout.x[v as usize] = (p[0] + dx) as f32;
            layout.y[v as usize] = (p[1] + dy) as f32;
        }
        cursor_x += b.w + gap;
        row_h = row_h.max(b.h);
    }
    layout
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random tree on `n` nodes by preferential attachment (the referral shape).
    fn tree(n: u32, seed: u64) -> Vec<(u32, u32)> {
        let mut rng = SplitMix64(seed);
        let mut tickets = vec![0u32];
        let mut edges = Vec::new();
        for v in 1..n {
            let parent = tickets[(rng.next_u64() % tickets.len() as u64) as usize];
            edges.push((parent, v));
            tickets.push(parent);
            tickets.push(v);
        }
        edges
    }

    /// Several trees of assorted sizes, their nodes interleaved, plus isolated nodes.
    fn forest() -> (usize, Vec<(u32, u32)>) {
        let sizes = [40u32, 1, 2, 17, 3, 1, 9, 2, 25, 1, 5, 4, 60, 2, 1, 8];
        let n: u32 = sizes.iter().sum();
        // A fixed shuffle of the node ids, so components are not contiguous ranges.
        let ids: Vec<u32> = (0..n).map(|i| (i * 37 + 11) % n).collect();
        let mut edges = Vec::new();
        let mut first = 0;
        for (k, &size) in sizes.iter().enumerate() {
            for (a, b) in tree(size, k as u64) {
                edges.push((ids[(first + a) as usize], ids[(first + b) as usize]));
            }
            first += size;
        }
        (n as usize, edges)
    }

    fn bits(layout: &Layout) -> Vec<(u32, u32)> {
        layout
            .x
            .iter()
            .zip(&layout.y)
            .map(|(x, y)| (x.to_bits(), y.to_bits()))
            .collect()
    }

    fn fnv1a(layout: &Layout) -> u64 {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for (x, y) in bits(layout) {
            for byte in x.to_le_bytes().into_iter().chain(y.to_le_bytes()) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }

    fn all_finite(layout: &Layout) -> bool {
        layout.x.iter().chain(&layout.y).all(|c| c.is_finite())
    }

    fn distance(layout: &Layout, a: usize, b: usize) -> f64 {
        let dx = f64::from(layout.x[a]) - f64::from(layout.x[b]);
        let dy = f64::from(layout.y[a]) - f64::from(layout.y[b]);
        (dx * dx + dy * dy).sqrt()
    }

    /// 12 nodes: a 7-node tree and a 5-cycle.
    const FIXED_EDGES: [(u32, u32); 11] = [
        (0, 1),
        (1, 2),
        (2, 3),
        (1, 4),
        (4, 5),
        (4, 6),
        (7, 8),
        (8, 9),
        (9, 10),
        (10, 11),
        (11, 7),
    ];

    #[test]
    fn fixed_graph_has_the_committed_coordinates() {
        let layout = layout(12, &FIXED_EDGES, 42, &LayoutParams::default());
        assert!(all_finite(&layout));
        // Any change to the algorithm changes this: update it on purpose only.
        assert_eq!(fnv1a(&layout), 0x76C1_3ABE_7D14_5952, "{layout:?}");
    }

    #[test]
    fn the_same_input_gives_the_same_bits() {
        let (n, edges) = forest();
        let params = LayoutParams::default();
        let first = layout(n, &edges, 7, &params);
        let second = layout(n, &edges, 7, &params);
        assert_eq!(bits(&first), bits(&second));
        let other_seed = layout(n, &edges, 8, &params);
        assert_ne!(bits(&first), bits(&other_seed));
    }

    #[test]
    fn thread_count_does_not_change_the_bits() {
        // Big enough for threaded force steps (PARALLEL_MIN) and a few small components.
        let mut edges = tree(PARALLEL_MIN as u32 + 500, 3);
        let (n_small, small) = forest();
        let offset = PARALLEL_MIN as u32 + 500;
        edges.extend(small.iter().map(|&(a, b)| (a + offset, b + offset)));
        let n = offset as usize + n_small;
        let params = |threads| LayoutParams {
            iterations: 6,
            polish_iterations: 4,
            threads,
            ..LayoutParams::default()
        };
        let one = bits(&layout(n, &edges, 1, &params(1)));
        assert_eq!(one, bits(&layout(n, &edges, 1, &params(2))));
        assert_eq!(one, bits(&layout(n, &edges, 1, &params(3))));
        assert_eq!(one, bits(&layout(n, &edges, 1, &params(0))));
    }

    #[test]
    fn components_are_packed_without_overlapping() {
        let (n, edges) = forest();
        let layout = layout(n, &edges, 5, &LayoutParams::default());
        assert!(all_finite(&layout));
        let graph = Csr::undirected(n, &edges);
        let boxes: Vec<[f32; 4]> = components(&graph)
            .iter()
            .map(|nodes| {
                let xs = nodes.iter().map(|&v| layout.x[v as usize]);
                let ys = nodes.iter().map(|&v| layout.y[v as usize]);
                [
                    xs.clone().fold(f32::MAX, f32::min),
                    ys.clone().fold(f32::MAX, f32::min),
                    xs.fold(f32::MIN, f32::max),
                    ys.fold(f32::MIN, f32::max),
                ]
            })
            .collect();
        assert_eq!(boxes.len(), 16);
        for (i, a) in boxes.iter().enumerate() {
            for b in &boxes[i + 1..] {
                let apart = a[2] < b[0] || b[2] < a[0] || a[3] < b[1] || b[3] < a[1];
                assert!(apart, "bounding boxes {a:?} and {b:?} overlap");
            }
        }
    }

    #[test]
    fn tree_edges_are_shorter_than_the_average_distance() {
        let n = 400;
        let edges = tree(n as u32, 11);
        let layout = layout(n, &edges, 1, &LayoutParams::default());
        let edge_mean = edges
            .iter()
            .map(|&(a, b)| distance(&layout, a as usize, b as usize))
            .sum::<f64>()
            / edges.len() as f64;
        let mut all = 0.0;
        for a in 0..n {
            for b in a + 1..n {
                all += distance(&layout, a, b);
            }
        }
        let all_mean = all / (n * (n - 1) / 2) as f64;
        assert!(
            edge_mean * 3.0 < all_mean,
            "edges {edge_mean}, all pairs {all_mean}"
        );
        // The median edge has the asked length.
        let mut lengths: Vec<f64> = edges
            .iter()
            .map(|&(a, b)| distance(&layout, a as usize, b as usize))
            .collect();
        lengths.sort_by(f64::total_cmp);
        let median = lengths[lengths.len() / 2];
        assert!((3.0..6.0).contains(&median), "median edge {median}");
    }

    #[test]
    fn nodes_keep_apart() {
        let n = 400;
        let edges = tree(n as u32, 2);
        let layout = layout(n, &edges, 1, &LayoutParams::default());
        let mut close = 0;
        for a in 0..n {
            for b in a + 1..n {
                if distance(&layout, a, b) < 1.0 {
                    close += 1;
                }
            }
        }
        assert!(
            close <= n / 100,
            "{close} pairs closer than a node diameter"
        );
    }

    #[test]
    fn degenerate_inputs() {
        let params = LayoutParams::default();
        let empty = layout(0, &[(0, 1)], 1, &params);
        assert!(empty.x.is_empty() && empty.y.is_empty());

        let one = layout(1, &[(0, 0), (0, 1)], 1, &params);
        assert_eq!((one.x.len(), one.y.len()), (1, 1));
        assert!(all_finite(&one));

        // Self loops, duplicates, both directions and unknown nodes change nothing.
        let clean = layout(4, &[(0, 1), (1, 2)], 9, &params);
        let messy = layout(
            4,
            &[
                (0, 1),
                (1, 0),
                (2, 2),
                (1, 2),
                (0, 1),
                (3, 4),
                (u32::MAX, 0),
            ],
            9,
            &params,
        );
        assert_eq!(bits(&clean), bits(&messy));

        // Isolated nodes: all apart, on a tidy grid.
        let isolated = layout(1000, &[], 1, &params);
        assert!(all_finite(&isolated));
        let mut points: Vec<(u32, u32)> = bits(&isolated);
        points.sort_unstable();
        points.dedup();
        assert_eq!(points.len(), 1000);

        // A pair is one edge length apart.
        let pair = layout(2, &[(1, 0)], 1, &params);
        assert!((distance(&pair, 0, 1) - 4.0).abs() < 1e-6);

        // Nonsense parameters fall back to sane values.
        let odd = LayoutParams {
            iterations: 3,
            threads: 0,
            edge_length: f32::NAN,
            node_diameter: -1.0,
            theta: f32::INFINITY,
            polish_iterations: 2,
            component_gap: f32::NEG_INFINITY,
        };
        let (n, edges) = forest();
        assert!(all_finite(&layout(n, &edges, 3, &odd)));
        let still = LayoutParams {
            iterations: 0,
            polish_iterations: 0,
            ..LayoutParams::default()
        };
        assert!(all_finite(&layout(n, &edges, 3, &still)));
    }

    #[test]
    fn big_star() {
        let leaves = 50_000u32;
        let edges: Vec<(u32, u32)> = (1..=leaves).map(|leaf| (0, leaf)).collect();
        let params = LayoutParams {
            iterations: 4,
            polish_iterations: 2,
            ..LayoutParams::default()
        };
        let star = layout(leaves as usize + 1, &edges, 1, &params);
        assert!(all_finite(&star));
    }

    #[test]
    fn coincident_points_do_not_break_the_quadtree() {
        let n = 1000;
        let xs = vec![3.0; n];
        let ys = vec![-2.0; n];
        let mut tree = QuadTree::default();
        tree.build(&xs, &ys);
        assert!(tree.cells.len() <= MAX_DEPTH as usize + 1);
        for i in 0..n {
            let [fx, fy] = tree.repulsion(i as u32, xs[i], ys[i], 0.81);
            assert!(fx.is_finite() && fy.is_finite() && fx != 0.0);
        }
        // A whole level starting on one point spreads out.
        let graph = Csr::undirected(n, &tree_edges_u32(n));
        let (mut xs, mut ys) = (xs, ys);
        let settings = Settings::from_params(&LayoutParams {
            iterations: 10,
            ..LayoutParams::default()
        });
        relax(&graph, &mut xs, &mut ys, 1.0, &settings, 1, &mut tree);
        assert!(xs.iter().chain(&ys).all(|c| c.is_finite()));
        let mut distinct: Vec<(u64, u64)> = xs
            .iter()
            .zip(&ys)
            .map(|(x, y)| (x.to_bits(), y.to_bits()))
            .collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > n / 2);
    }

    fn tree_edges_u32(n: usize) -> Vec<(u32, u32)> {
        tree(n as u32, 4)
    }
}
