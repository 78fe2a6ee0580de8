// The Fleet tab at 1,000 nodes in a real headless Chromium: first paint, update latency and the
// CPU the plugin spends writing snapshots into an open tab.
//
// The tab's route (src/console.ts, unchanged) is served on loopback with a stand-in bridge whose
// `console.snapshot` answers a fleet of CLAW_BENCH_NODES nodes (default 1,000), 8 GPUs each, with
// a live reading for every GPU and 200 workloads: the size a bridge sends for such a fleet.
// `console.page` answers the console's real files (node/api/console). Chromium opens the tab's
// page directly, as the Control UI's frame would. Measured:
// - first paint: from navigation to the first snapshot drawn (every node in the table);
// - update latency: from the moment the plugin takes a snapshot from the bridge to the moment the
//   page has drawn it (p50 / p95 over the run), and the page's own drawing time;
// - the plugin's CPU time per snapshot written, and the snapshot's size.
//
//   CLAW_CHROMIUM=/usr/bin/chromium node plugin/openclaw-clawbernetes/bench/console.ts
// (`scripts/bench.sh console` runs it with Node 24.)

import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { Bridge, BRIDGE_COMMANDS, resolveConfig, type NodesRuntime } from "../src/bridge.ts";
import { CONSOLE_PATH, ConsoleTab } from "../src/console.ts";

const NODES = Number(process.env.CLAW_BENCH_NODES ?? 1000);
const UPDATES = Number(process.env.CLAW_BENCH_UPDATES ?? 30);
const EVERY_MS = 1000;
const chromium = process.env.CLAW_CHROMIUM ?? "/usr/bin/chromium";

const files = Object.fromEntries(
  ["page:index.html", "script:app.js", "style:app.css"].map((pair) => {
    const [field, file] = pair.split(":");
    return [field, readFileSync(new URL(`../../../node/api/console/${file}`, import.meta.url), "utf8")];
  }),
);

/** A fleet of `count` nodes with 8 GPUs each, all read moments ago, as the bridge answers it. */
function snapshot(count: number, tick: number): Record<string, unknown> {
  const nodes = [];
  const readings = [];
  for (let n = 0; n < count; n++) {
    const gpus = [];
    for (let g = 0; g < 8; g++) {
      const uuid = `GPU-${n.toString(16).padStart(8, "0")}-${g}`;
      gpus.push({ uuid, model: "NVIDIA H100 80GB HBM3", memory_mib: 81_559, simulated: false, allocated: g < (n % 5) });
      readings.push({
        uuid, index: g, utilization_gpu_pct: (n * 7 + g * 13 + tick * 3) % 100, temperature_c: 40 + ((n + g + tick) % 40),
        memory_used_bytes: ((n + g + tick) % 80) * 1_000_000_000, memory_total_bytes: 85_520_809_984, power_usage_mw: 350_000,
      });
    }
    nodes.push({
      peer_id: `12D3KooW${n.toString(36).padStart(44, "x")}`, local: false, name: `gpu-node-${n}`,
      region: ["eu-west", "us-east", "ap-south"][n % 3], cordoned: n % 97 === 0, running_workloads: n % 5,
      software_version: "0.1.0", reachability: "public", announced_ms: Date.now() - (n % 10) * 1000, gpus,
    });
  }
  const workloads = [];
  for (let w = 0; w < 200; w++) {
    workloads.push({
      node: `gpu-node-${w * 5}`, id: `wl-${w.toString(16).padStart(12, "0")}`, name: `train-${w}`,
      image: "registry.example/trainer:1.4", state: "running", gpus: [`GPU-${(w * 5).toString(16).padStart(8, "0")}-0`],
      simulated_gpus: false, created_ms: Date.now() - w * 60_000, reason: null,
    });
  }
  return {
    at_ms: Date.now(), scope: "bridge", signed_in: { with: "OpenClaw gateway", name: null, role: "read" },
    withheld: [], silent_after_ms: 21_000, nodes, readings, workloads, offers: null, leases: null, history: null,
  };
}

let tick = 0;
let bytes = 0;
// CPU the stand-in bridge spends making snapshots, which is not the plugin's.
let standInCpuUs = 0;
const runtime: NodesRuntime = {
  async list() {
    return { nodes: [{ nodeId: "bridge", commands: [...BRIDGE_COMMANDS], connected: true }] };
  },
  async invoke({ command }) {
    if (command === "console.page") return files;
    const started = process.cpuUsage();
    const answer = snapshot(NODES, ++tick);
    bytes = Buffer.byteLength(JSON.stringify(answer));
    const spent = process.cpuUsage(started);
    standInCpuUs += spent.user + spent.system;
    return answer;
  },
};

/** A minimal DevTools client: one page, commands in order. */
async function browser(): Promise<{ send: (method: string, params?: unknown) => Promise<any>; close: () => Promise<void> }> {
  const profile = mkdtempSync(join(tmpdir(), "claw-bench-chromium-"));
  const child = spawn(chromium, ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--remote-debugging-port=0", "--window-size=1400,900", `--user-data-dir=${profile}`, "about:blank"], { stdio: ["ignore", "ignore", "pipe"] });
  const url = await new Promise<string>((resolve, reject) => {
    let seen = "";
    child.stderr.on("data", (chunk: Buffer) => {
      seen += chunk.toString();
      const found = /DevTools listening on (ws:\/\/\S+)/.exec(seen);
      if (found) resolve(found[1]);
    });
    child.on("exit", () => reject(new Error(`chromium exited: ${seen.slice(-400)}`)));
  });
  const socket = new WebSocket(url);
  await new Promise((resolve) => socket.addEventListener("open", resolve, { once: true }));
  let id = 0;
  let session: string | undefined;
  const pending = new Map<number, (answer: any) => void>();
  socket.addEventListener("message", (event) => {
    const answer = JSON.parse(String(event.data));
    if (answer.id && pending.has(answer.id)) {
      pending.get(answer.id)!(answer);
      pending.delete(answer.id);
    }
  });
  const send = (method: string, params: unknown = {}) =>
    new Promise<any>((resolve, reject) => {
      const message: Record<string, unknown> = { id: ++id, method, params };
      if (session) message.sessionId = session;
      pending.set(id, (answer) => (answer.error ? reject(new Error(`${method}: ${JSON.stringify(answer.error)}`)) : resolve(answer.result)));
      socket.send(JSON.stringify(message));
    });
  const { targetId } = await send("Target.createTarget", { url: "about:blank" });
  session = (await send("Target.attachToTarget", { targetId, flatten: true })).sessionId;
  return {
    send,
    close: async () => {
      socket.close();
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill();
      await exited;
      rmSync(profile, { recursive: true, force: true, maxRetries: 5 });
    },
  };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

const tab = new ConsoleTab(new Bridge(runtime, resolveConfig({})), EVERY_MS);
tab.start();
const server = createServer((req, res) => void tab.handle(req, res));
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
const address = `http://127.0.0.1:${(server.address() as AddressInfo).port}${CONSOLE_PATH}`;
const page = await browser();
const evaluate = async (expression: string) =>
  (await page.send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true })).result.value;

// Each snapshot drawn: when (wall clock, to compare with the snapshot's at_ms) and how long the
// page took to draw it. The hook wraps push as the console's script defines it.
await page.send("Page.enable");
await page.send("Page.addScriptToEvaluateOnNewDocument", {
  source: `window.__drawn = [];
    Object.defineProperty(window, "clawConsole", { configurable: true,
      set(value) { const push = value.push; value.push = (s) => { const t = performance.now(); push(s);
        window.__drawn.push({ at_ms: s.at_ms, done: Date.now(), draw_ms: performance.now() - t, since_nav: performance.now(),
          rows: document.querySelectorAll('#nodes .row').length }); };
        Object.defineProperty(window, "clawConsole", { value, writable: true, configurable: true }); } });`,
});
const cpuBefore = process.cpuUsage();
const ticksBefore = tick;
const standInBefore = standInCpuUs;
await page.send("Page.navigate", { url: address });
type Drawn = { at_ms: number; done: number; draw_ms: number; since_nav: number; rows: number };
/** Waits until `count` snapshots past the first `from` are drawn; answers them. */
async function drawnAfter(from: number, count: number): Promise<Drawn[]> {
  const deadline = Date.now() + (count + 30) * EVERY_MS * 2;
  let drawn: Drawn[] = [];
  while (drawn.length < from + count && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    drawn = (await evaluate("window.__drawn")) ?? [];
  }
  if (drawn.length < from + count) throw new Error(`only ${drawn.length} snapshots drawn`);
  return drawn.slice(from, from + count);
}
const [first] = await drawnAfter(0, 1);
const fleetView = await drawnAfter(1, UPDATES);
const cpu = process.cpuUsage(cpuBefore);
const snapshots = tick - ticksBefore;
const rowsInPage = await evaluate("document.querySelectorAll('#nodes .row').length");
// The GPU view: every GPU's live columns, in the virtualised table.
await evaluate("document.querySelector('[data-tab=gpus]').click(); true");
const seen = ((await evaluate("window.__drawn.length")) as number) + 1;
const gpuView = await drawnAfter(seen, UPDATES);
const gpuRows = await evaluate("document.querySelectorAll('#gpus .row').length");
await page.close();
tab.stop();
server.closeAllConnections();
server.close();

const summary = (list: Drawn[]) => {
  const latency = list.map((d) => d.done - d.at_ms).sort((a, b) => a - b);
  const draw = list.map((d) => d.draw_ms).sort((a, b) => a - b);
  return {
    update_latency_ms: { p50: percentile(latency, 50), p95: percentile(latency, 95) },
    draw_ms: { p50: Math.round(percentile(draw, 50) * 10) / 10, p95: Math.round(percentile(draw, 95) * 10) / 10 },
  };
};
const result = {
  nodes: NODES,
  gpus: NODES * 8,
  snapshot_bytes: bytes,
  first_paint_ms: Math.round(first.since_nav),
  first_paint_rows: first.rows,
  rows_in_page: rowsInPage,
  fleet_view: summary(fleetView),
  gpu_view: { ...summary(gpuView), rows_in_page: gpuRows },
  plugin_cpu_ms_per_snapshot: Math.round(((cpu.user + cpu.system - (standInCpuUs - standInBefore)) / 1000 / snapshots) * 10) / 10,
  snapshots,
};
console.log(JSON.stringify(result, null, 2));
