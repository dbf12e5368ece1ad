#!/usr/bin/env node
// Drives the referral-graph page (src/http/graph.html) in the system's headless Chromium.
//
//   node tests/browser/graph.mjs <page-url> <screenshot-path> <json-expectations>
//
// <json-expectations>: {"hub": "<member id of a hub>", "neighbours": ["<id>", ...], "nodes": 25}
// where neighbours are the hub's direct neighbours in both directions (its recruits and its
// referrer) and nodes is how many nodes the page should draw.
//
// Chromium: $CHROMIUM, else the first of chromium, chromium-browser, google-chrome on PATH
// (Debian's `chromium`: scripts/bootstrap.sh installs it). Prints one line per check; stops at
// the first failure with a message on stderr and exit status 1 (2 for bad usage).
import { accessSync, constants, mkdirSync } from 'node:fs';
import path from 'node:path';
import process from 'node:process';
import puppeteer from 'puppeteer-core';

const VIEWPORT = { width: 1000, height: 700 };
const READY_TIMEOUT_MS = 20_000;
const INTRO_TIMEOUT_MS = 10_000;

class CheckFailed extends Error {}

function usage(message) {
  console.error(`graph.mjs: ${message}`);
  console.error('usage: node tests/browser/graph.mjs <page-url> <screenshot-path> <json-expectations>');
  console.error('  json-expectations: {"hub": "<id>", "neighbours": ["<id>", ...], "nodes": <count>}');
  process.exit(2);
}

function parseArgs(argv) {
  if (argv.length !== 3) usage(`expected 3 arguments, got ${argv.length}`);
  const [url, screenshot, json] = argv;
  try {
    new URL(url);
  } catch {
    usage(`not a URL: ${url}`);
  }
  let expect;
  try {
    expect = JSON.parse(json);
  } catch (e) {
    usage(`expectations are not JSON: ${e.message}`);
  }
  if (!expect || typeof expect.hub !== 'string' || expect.hub === '') usage('expectations need "hub": a member id');
  if (!Array.isArray(expect.neighbours) || expect.neighbours.some((id) => typeof id !== 'string')) {
    usage('expectations need "neighbours": an array of member ids');
  }
  if (!Number.isInteger(expect.nodes) || expect.nodes < 1) usage('expectations need "nodes": a positive integer');
  return { url, screenshot, expect };
}

function executable(file) {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function onPath(name) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (dir && executable(path.join(dir, name))) return path.join(dir, name);
  }
  return null;
}

function findChromium() {
  const configured = process.env.CHROMIUM;
  if (configured) {
    const found = configured.includes('/') ? (executable(configured) ? configured : null) : onPath(configured);
    if (!found) throw new CheckFailed(`CHROMIUM=${configured} is not an executable file`);
    return found;
  }
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    const found = onPath(name);
    if (found) return found;
  }
  throw new CheckFailed(
    'no Chromium found: set CHROMIUM, or put chromium, chromium-browser or google-chrome on PATH ' +
      '(scripts/bootstrap.sh installs Debian\'s chromium)',
  );
}

let checkNumber = 0;
function pass(what) {
  checkNumber += 1;
  console.log(`ok ${checkNumber} - ${what}`);
}
function fail(what) {
  throw new CheckFailed(what);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const rgb = (p) => `rgb(${p[0]}, ${p[1]}, ${p[2]})`;
const isWhite = (p) => p[0] >= 240 && p[1] >= 240 && p[2] >= 240;
// The hub green #1a9850 and the member navy #1f2a5a, give or take antialiasing; not the pale
// green of a hub's halo, nor a dimmed node.
const isGreenish = (p) => p[1] >= p[0] + 80 && p[1] >= p[2] + 40 && p[0] < 110;
const isNavyish = (p) => p[2] >= p[0] + 25 && p[2] >= p[1] + 20 && p[0] < 120 && p[1] < 130;
const lightness = (p) => p[0] + p[1] + p[2];

// The canvas pixels around each CSS-pixel point of the viewport (the canvas fills it): a patch of
// (2 * reach + 1)² device pixels, each [r, g, b]. A patch rather than one pixel, so that an
// antialiased edge, or a small node or an outline drawn over a hub's centre, cannot hide it.
async function patches(page, points, reach = 1) {
  return page.evaluate((pts, k) => {
    const canvas = document.querySelector('canvas');
    const ctx = canvas.getContext('2d');
    const rect = canvas.getBoundingClientRect();
    const sx = canvas.width / rect.width, sy = canvas.height / rect.height;
    return pts.map((p) => {
      const x = Math.floor((p.x - rect.left) * sx), y = Math.floor((p.y - rect.top) * sy);
      const d = ctx.getImageData(x - k, y - k, 2 * k + 1, 2 * k + 1).data;
      const out = [];
      for (let i = 0; i < d.length; i += 4) out.push([d[i], d[i + 1], d[i + 2]]);
      return out;
    });
  }, points, reach);
}
const darkest = (patch) => patch.reduce((a, b) => (lightness(b) < lightness(a) ? b : a));
const HUB_RGB = [0x1a, 0x98, 0x50];
const MEMBER_RGB = [0x1f, 0x2a, 0x5a];
// The pixel of the patch nearest to a colour.
const nearest = (patch, c) => {
  const d = (p) => (p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2 + (p[2] - c[2]) ** 2;
  return patch.reduce((a, b) => (d(b) < d(a) ? b : a));
};

// Resolves after the page has painted twice, so a change of state has reached the canvas.
async function twoFrames(page) {
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
}

async function openPage(browser, url, { reducedMotion }) {
  const page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`uncaught: ${e.message}`));
  page.on('console', (msg) => {
    const from = msg.location() && msg.location().url ? ` (${msg.location().url})` : '';
    if (msg.type() === 'error' && !/\/favicon\.ico$/.test(from.slice(2, -1))) problems.push(`console error: ${msg.text()}${from}`);
  });
  await page.setViewport(VIEWPORT);
  if (reducedMotion) await page.emulateMediaFeatures([{ name: 'prefers-reduced-motion', value: 'reduce' }]);
  let response;
  try {
    response = await page.goto(url, { waitUntil: 'load', timeout: READY_TIMEOUT_MS });
  } catch (e) {
    fail(`could not load ${url}: ${e.message}`);
  }
  if (!response || !response.ok()) fail(`${url} answered HTTP ${response ? response.status() : 'nothing'}`);
  try {
    await page.waitForFunction(
      () => window.flashGraph && (window.flashGraph.ready || window.flashGraph.error !== null),
      { timeout: READY_TIMEOUT_MS, polling: 50 },
    );
  } catch {
    const hook = await page.evaluate(() => typeof window.flashGraph);
    fail(`flashGraph.ready did not become true within ${READY_TIMEOUT_MS / 1000} s (window.flashGraph: ${hook})` +
      (problems.length ? `; ${problems.join('; ')}` : ''));
  }
  const error = await page.evaluate(() => window.flashGraph.error);
  if (error !== null) fail(`the page shows an error: ${JSON.stringify(error)}`);
  if (problems.length) fail(`the page reported errors: ${problems.join('; ')}`);
  return { page, problems };
}

async function waitIntro(page) {
  try {
    await page.waitForFunction(() => window.flashGraph.introDone, { timeout: INTRO_TIMEOUT_MS, polling: 50 });
  } catch {
    fail(`the intro animation did not finish within ${INTRO_TIMEOUT_MS / 1000} s`);
  }
  await twoFrames(page);
}

async function screenOf(page, id) {
  const p = await page.evaluate((i) => window.flashGraph.screenOf(i), id);
  if (!p || !Number.isFinite(p.x) || !Number.isFinite(p.y)) fail(`flashGraph.screenOf(${JSON.stringify(id)}) gave ${JSON.stringify(p)}`);
  if (p.x < 0 || p.y < 0 || p.x >= VIEWPORT.width || p.y >= VIEWPORT.height) {
    fail(`node ${id} is outside the viewport at (${p.x.toFixed(1)}, ${p.y.toFixed(1)}) after fit-to-view`);
  }
  return p;
}

// A non-hub node outside the neighbourhood, far from its nodes and its edges (which the highlight
// draws on top), whose centre pixel shows the node: there the dimming must be visible.
async function pickOutsider(page, neighbourhood) {
  return page.evaluate((hood) => {
    const g = window.flashGraph;
    const inHood = new Set(hood);
    const hub = g.screenOf(hood[0]);
    const hoodPoints = hood.map((id) => g.screenOf(id));
    const segDist = (p, a, b) => {
      const dx = b.x - a.x, dy = b.y - a.y, len = dx * dx + dy * dy;
      const t = len === 0 ? 0 : Math.max(0, Math.min(1, ((p.x - a.x) * dx + (p.y - a.y) * dy) / len));
      return Math.hypot(p.x - (a.x + t * dx), p.y - (a.y + t * dy));
    };
    const out = [];
    for (const id of g.nodeIds()) {
      if (inHood.has(id) || g.nodeInfo(id).hub) continue;
      const p = g.screenOf(id);
      if (p.x < 20 || p.y < 20 || p.x > innerWidth - 20 || p.y > innerHeight - 20) continue;
      if (hoodPoints.some((q) => Math.hypot(p.x - q.x, p.y - q.y) < 40)) continue;
      if (hoodPoints.some((q) => segDist(p, hub, q) < 12)) continue;
      out.push({ id, x: p.x, y: p.y });
      if (out.length >= 20) break;
    }
    return out;
  }, neighbourhood);
}

// A point of the viewport where nothing is hovered.
async function moveToEmptySpot(page) {
  const spots = [
    [VIEWPORT.width - 3, VIEWPORT.height - 3], [VIEWPORT.width - 3, 3], [3, VIEWPORT.height - 3],
    [VIEWPORT.width / 2, VIEWPORT.height - 3], [VIEWPORT.width - 3, VIEWPORT.height / 2],
  ];
  for (const [x, y] of spots) {
    await page.mouse.move(x, y);
    if ((await page.evaluate(() => window.flashGraph.hovered)) === null) return;
  }
  fail('found no spot in the viewport where no node is hovered');
}

async function run({ url, screenshot, expect }) {
  const executablePath = findChromium();
  const browser = await puppeteer.launch({
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--headless=new', '--disable-gpu'],
    defaultViewport: VIEWPORT,
  });
  try {
    console.log(`# ${await browser.version()} (${executablePath})`);

    // 1. Loads and draws.
    const { page } = await openPage(browser, url, { reducedMotion: false });
    const info = await page.evaluate(() => ({ nodes: window.flashGraph.nodeCount, edges: window.flashGraph.edgeCount }));
    if (info.nodes !== expect.nodes) fail(`flashGraph.nodeCount is ${info.nodes}, expected ${expect.nodes}`);
    pass(`page loaded and drew ${info.nodes} nodes and ${info.edges} edges, no error`);

    // 2. Nodes are on the canvas, hubs green and the others navy.
    await waitIntro(page);
    const hood = [expect.hub, ...expect.neighbours];
    const hubInfo = await page.evaluate((id) => window.flashGraph.nodeInfo(id), expect.hub);
    if (!hubInfo) fail(`the hub ${expect.hub} is not in the graph`);
    if (!hubInfo.hub) fail(`${expect.hub} is not drawn as a hub (recruits: ${hubInfo.recruits})`);
    const absent = await page.evaluate((list) => list.filter((id) => window.flashGraph.nodeInfo(id) === null), hood);
    if (absent.length) fail(`expected neighbours not in the graph: ${absent.join(', ')}`);
    const sampleIds = [...new Set([...hood.slice(0, 9), ...(await page.evaluate(() => window.flashGraph.nodeIds().slice(0, 4)))])];
    // The non-hub to check the navy on: the one least likely under a hub, as hubs are drawn on top.
    // Node radii grow with 1 + √recruits, so that is the distance to a hub divided by that.
    const memberId = await page.evaluate((preferred) => {
      const g = window.flashGraph;
      const all = g.nodeIds();
      const hubs = all.filter((id) => g.nodeInfo(id).hub).map((id) => {
        const p = g.screenOf(id);
        return { x: p.x, y: p.y, size: 1 + Math.sqrt(g.nodeInfo(id).recruits) };
      });
      const candidates = [...preferred, ...all.slice(0, 2000)].filter((id) => !g.nodeInfo(id).hub);
      let best = null, bestDistance = -1;
      for (const id of candidates) {
        const p = g.screenOf(id);
        if (p.x < 0 || p.y < 0 || p.x >= innerWidth || p.y >= innerHeight) continue;
        let d = Infinity;
        for (const h of hubs) d = Math.min(d, Math.hypot(p.x - h.x, p.y - h.y) / h.size);
        if (d > bestDistance) { best = id; bestDistance = d; }
      }
      return best;
    }, sampleIds);
    if (!memberId) fail('the graph has no node without recruits in view to check the navy colour on');
    if (!sampleIds.includes(memberId)) sampleIds.push(memberId);
    const points = [];
    for (const id of sampleIds) points.push(await screenOf(page, id));
    const around = await patches(page, points, 1);
    sampleIds.forEach((id, k) => {
      if (around[k].every(isWhite)) {
        fail(`node ${id} at (${points[k].x.toFixed(1)}, ${points[k].y.toFixed(1)}) is not drawn: only background there`);
      }
    });
    const [hubPatch] = await patches(page, [points[0]], 2);
    const hubPixel = nearest(hubPatch, HUB_RGB);
    if (!isGreenish(hubPixel)) fail(`the hub ${expect.hub} is not green: darkest pixel there ${rgb(darkest(hubPatch))}`);
    const memberPatch = around[sampleIds.indexOf(memberId)];
    const memberPixel = nearest(memberPatch, MEMBER_RGB);
    if (!isNavyish(memberPixel)) fail(`the non-hub ${memberId} is not navy: darkest pixel there ${rgb(darkest(memberPatch))}`);
    pass(`${sampleIds.length} nodes drawn; hub ${rgb(hubPixel)}, non-hub ${rgb(memberPixel)}`);

    // 3. Hovering the hub highlights its neighbourhood and dims the rest.
    await moveToEmptySpot(page);
    await twoFrames(page);
    const outsiders = await pickOutsider(page, hood);
    const outsiderBefore = outsiders.length ? (await patches(page, outsiders, 1)).map(darkest) : [];
    const hubPoint = points[0];
    await page.mouse.move(hubPoint.x, hubPoint.y);
    await twoFrames(page);
    const state = await page.evaluate(() => ({ hovered: window.flashGraph.hovered, highlighted: window.flashGraph.highlighted }));
    if (state.hovered !== expect.hub) fail(`after moving onto the hub, flashGraph.hovered is ${JSON.stringify(state.hovered)}, expected ${expect.hub}`);
    const wanted = [...new Set(hood)].sort();
    if (JSON.stringify(state.highlighted) !== JSON.stringify(wanted)) {
      const got = new Set(state.highlighted);
      const want = new Set(wanted);
      fail(`flashGraph.highlighted is wrong: missing [${wanted.filter((id) => !got.has(id)).join(', ')}], ` +
        `extra [${state.highlighted.filter((id) => !want.has(id)).join(', ')}]`);
    }
    let dimNote = 'no node outside the neighbourhood to check dimming on';
    const usable = outsiders.map((o, k) => ({ ...o, before: outsiderBefore[k] })).filter((o) => !isWhite(o.before));
    if (usable.length) {
      const after = (await patches(page, usable.slice(0, 1), 1)).map(darkest);
      const o = usable[0];
      if (!(lightness(after[0]) > lightness(o.before) + 60)) {
        fail(`node ${o.id} outside the neighbourhood was not dimmed: ${rgb(o.before)} before the hover, ${rgb(after[0])} during it`);
      }
      dimNote = `node ${o.id} dimmed from ${rgb(o.before)} to ${rgb(after[0])}`;
    }
    pass(`hovering the hub highlights it and its ${wanted.length - 1} neighbours; ${dimNote}`);
    await moveToEmptySpot(page);

    // 4. Animation runs by default, and not at all with reduced motion.
    const motion = await page.evaluate(() => ({
      reduce: matchMedia('(prefers-reduced-motion: reduce)').matches,
      animating: window.flashGraph.animating,
      frames: window.flashGraph.frames,
    }));
    if (motion.reduce) fail('the default page matches prefers-reduced-motion: reduce');
    if (!motion.animating) fail('flashGraph.animating is false with the default motion preference');
    await sleep(500);
    const framesLater = await page.evaluate(() => window.flashGraph.frames);
    if (!(framesLater > motion.frames)) fail(`flashGraph.frames stayed at ${motion.frames} over 500 ms with animations allowed`);
    const { page: still } = await openPage(browser, url, { reducedMotion: true });
    const stillState = await still.evaluate(() => ({
      reduce: matchMedia('(prefers-reduced-motion: reduce)').matches,
      animating: window.flashGraph.animating,
      frames: window.flashGraph.frames,
      nodes: window.flashGraph.nodeCount,
    }));
    if (!stillState.reduce) fail('emulating prefers-reduced-motion: reduce did not reach the page');
    if (stillState.nodes !== expect.nodes) fail(`with reduced motion, nodeCount is ${stillState.nodes}, expected ${expect.nodes}`);
    if (stillState.animating !== false) fail(`with reduced motion, flashGraph.animating is ${stillState.animating}`);
    await sleep(500);
    const stillFrames = await still.evaluate(() => window.flashGraph.frames);
    if (stillFrames !== stillState.frames) fail(`with reduced motion, flashGraph.frames went from ${stillState.frames} to ${stillFrames} in 500 ms`);
    const [stillHub] = await patches(still, [await screenOf(still, expect.hub)], 2);
    if (!stillHub.some(isGreenish)) fail(`with reduced motion, the hub is not drawn green: darkest pixel there ${rgb(darkest(stillHub))}`);
    await still.close();
    pass(`animating by default (${framesLater - motion.frames} frames in 500 ms); with reduced motion none (frames stay ${stillFrames}), drawn statically`);

    // 5. Screenshot: default motion, intro over, nothing hovered.
    await waitIntro(page);
    if ((await page.evaluate(() => window.flashGraph.hovered)) !== null) fail('a node is still hovered before the screenshot');
    mkdirSync(path.dirname(path.resolve(screenshot)), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
    pass(`screenshot saved to ${screenshot}`);
  } finally {
    await browser.close();
  }
}

const args = parseArgs(process.argv.slice(2));
try {
  await run(args);
  console.log(`graph: ${checkNumber} passed, 0 failed`);
} catch (e) {
  console.log(`not ok ${checkNumber + 1} - ${e instanceof CheckFailed ? e.message : 'unexpected error'}`);
  console.log(`graph: ${checkNumber} passed, 1 failed`);
  console.error(`graph.mjs: FAILED: ${e instanceof CheckFailed ? e.message : e.stack || e}`);
  process.exit(1);
}
