// The Fleet tab's route, served on a loopback HTTP server: the page is the console's own files
// inline under one nonce, snapshots stream in as script calls with peer strings that cannot end
// their script, the tab only reads, and a closed tab stops asking the bridge.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";

import { Bridge, BRIDGE_COMMANDS, resolveConfig, type NodesRuntime } from "../src/bridge.ts";
import { CONSOLE_PATH, ConsoleTab, LOGS_EVERY_MS, scriptJson, tabDocument, TAB_LOGS_PATH } from "../src/console.ts";

// The files the bridge's console.page answers with (claw_api::console).
const files = Object.fromEntries(
  ["page:index.html", "script:app.js", "style:app.css"].map((pair) => {
    const [field, file] = pair.split(":");
    return [field, readFileSync(new URL(`../../../node/api/console/${file}`, import.meta.url), "utf8")];
  }),
) as { page: string; script: string; style: string };

const hostile = '</script><script>document.title="owned"</script>\u2028<!--';

function bridgeAnswering(
  snapshots: () => unknown,
  invoked: (params: Record<string, unknown>) => unknown = () => {
    throw new Error("unexpected fleet.invoke");
  },
): { bridge: Bridge; calls: string[] } {
  const calls: string[] = [];
  const runtime: NodesRuntime = {
    async list() {
      return { nodes: [{ nodeId: "bridge-1", commands: [...BRIDGE_COMMANDS], connected: true }] };
    },
    async invoke({ command, params }) {
      calls.push(command);
      if (command === "console.page") return files;
      if (command === "console.snapshot") return snapshots();
      if (command === "fleet.invoke") return invoked(params as Record<string, unknown>);
      throw new Error(`unexpected ${command}`);
    },
  };
  return { bridge: new Bridge(runtime, resolveConfig({})), calls };
}

async function serve(tab: ConsoleTab): Promise<{ server: Server; url: string }> {
  tab.start();
  // As the gateway routes them: the tab's path (gateway auth) and the logs path (plugin auth).
  const server = createServer((req, res) => {
    const logs = new URL(req.url ?? "/", "http://gateway").pathname === TAB_LOGS_PATH;
    void (logs ? tab.handleLogs(req, res) : tab.handle(req, res)).then((handled) => {
      if (!handled) res.writeHead(404).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

/** Reads the tab's answer until `enough` says so, then closes it. */
function readTab(url: string, enough: (body: string) => boolean): Promise<{ status: number; csp: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        body += chunk;
        if (enough(body)) {
          req.destroy();
          resolve({ status: res.statusCode ?? 0, csp: String(res.headers["content-security-policy"]), body });
        }
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, csp: String(res.headers["content-security-policy"]), body }));
    });
    req.on("error", reject);
    req.end();
  });
}

/** Opens a tab and keeps it open: its capability, once its page has it and a snapshot came. */
async function openTab(url: string): Promise<{ capability: string; kept: ReturnType<typeof request> }> {
  let capability = "";
  let pushed = false;
  const kept = request(`${url}${CONSOLE_PATH}`, (res) => {
    let body = "";
    res.setEncoding("utf8");
    res.on("data", (chunk: string) => {
      body += chunk;
      capability = /"capability":"([A-Za-z0-9_-]+)"/.exec(body)?.[1] ?? capability;
      pushed ||= body.includes("clawConsole.push(");
    });
  });
  kept.end();
  const started = Date.now();
  while (!(capability && pushed) && Date.now() - started < 5000) await new Promise((r) => setTimeout(r, 20));
  return { capability, kept };
}

test("peer strings cannot end the script they are written into", () => {
  const json = scriptJson({ name: hostile });
  assert.ok(!/<\/script/i.test(json) && !json.includes("<!--") && !json.includes("\u2028"), json);
  assert.deepEqual(JSON.parse(json), { name: hostile });
});

test("the tab's document is the console's page with its files inline under one nonce", () => {
  const doc = tabDocument(files, "n0nce");
  assert.ok(!/<link /.test(doc) && !/<script src/.test(doc), "nothing is fetched by the frame");
  assert.ok(doc.includes(`<style nonce="n0nce">${files.style}</style>`));
  assert.ok(doc.includes('<script nonce="n0nce">window.clawConsoleHost = "tab"; window.clawConsoleTab = {"logs":"/plugins/clawbernetes-tab/logs","capability":""};</script>'));
  assert.ok(doc.endsWith(`<script nonce="n0nce">${files.script}</script>\n`), "the script runs after the page's elements");
  assert.ok(doc.indexOf('clawConsoleHost = "tab"') < doc.indexOf(files.script.slice(0, 40)));
  assert.ok(!doc.includes("</body>"), "the document stays open for snapshots");
  assert.throws(() => tabDocument({ ...files, script: "x</script>" }, "n"));
});

test("an open tab gets a snapshot every interval, escaped, and stops asking once closed", async () => {
  const { bridge, calls } = bridgeAnswering(() => ({ nodes: [{ name: hostile }] }));
  const tab = new ConsoleTab(bridge, 50);
  const { server, url } = await serve(tab);
  try {
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(calls, [], "nothing is asked while no tab is open");
    const { status, csp, body } = await readTab(`${url}${CONSOLE_PATH}`, (b) => (b.match(/clawConsole\.push\(/g) ?? []).length >= 3);
    assert.equal(status, 200);
    const nonce = /nonce-([A-Za-z0-9+/=]+)'/.exec(csp)?.[1];
    assert.ok(nonce && csp.includes("default-src 'none'") && csp.includes(`script-src 'nonce-${nonce}'`), csp);
    // Every script element in the answer carries the nonce; none came from a peer string.
    const scripts = body.match(/<script[^>]*>/g) ?? [];
    assert.ok(scripts.length >= 5);
    for (const tag of scripts) assert.equal(tag, `<script nonce="${nonce}">`);
    assert.ok(!body.includes('document.title="owned"</script>'));
    const pushed = /clawConsole\.push\((.*)\)<\/script>/.exec(body)?.[1];
    assert.deepEqual(JSON.parse(pushed!), { nodes: [{ name: hostile }] });
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(tab.openTabs(), 0, "the closed tab is let go");
    const asked = calls.filter((c) => c === "console.snapshot").length;
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(calls.filter((c) => c === "console.snapshot").length, asked, "no snapshot is asked for a closed tab");
    assert.equal(calls.filter((c) => c === "console.page").length, 1);
    // Two tabs open at once share one snapshot per interval.
    const before = calls.length;
    const [one, two] = await Promise.all([
      readTab(`${url}${CONSOLE_PATH}`, (b) => (b.match(/clawConsole\.push\(/g) ?? []).length >= 4),
      readTab(`${url}${CONSOLE_PATH}`, (b) => (b.match(/clawConsole\.push\(/g) ?? []).length >= 4),
    ]);
    assert.ok(one.status === 200 && two.status === 200);
    const shared = calls.slice(before).filter((c) => c === "console.snapshot").length;
    assert.ok(shared >= 4 && shared <= 6, `two tabs, four snapshots each, from ${shared} calls`);
    tab.stop();
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test("the tab only reads, says when the bridge is away, and answers only its own path", async () => {
  let up = false;
  const { bridge } = bridgeAnswering(() => {
    if (!up) throw new Error("bridge restarting");
    return { nodes: [] };
  });
  const tab = new ConsoleTab(bridge, 50);
  const { server, url } = await serve(tab);
  try {
    const posted = await fetch(`${url}${CONSOLE_PATH}`, { method: "POST" });
    assert.equal(posted.status, 405);
    assert.equal((await fetch(`${url}/plugins/clawbernetes/other`)).status, 404);
    const { body } = await readTab(`${url}${CONSOLE_PATH}`, (b) => b.includes("clawConsole.lost(") && (up = true) && b.includes("clawConsole.push("));
    assert.ok(body.includes('clawConsole.lost("bridge: '), body.slice(-300));
    tab.stop();
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test("a tab that does not read skips snapshots instead of piling them up", async () => {
  // About 1 MB a snapshot, every 20 ms: 75 MB in 1.5 s for a viewer that reads nothing.
  const big = "x".repeat(1_000_000);
  const { bridge } = bridgeAnswering(() => ({ nodes: [{ name: big }] }));
  const tab = new ConsoleTab(bridge, 20);
  tab.start();
  let answer: import("node:http").ServerResponse | undefined;
  const server = createServer((req, res) => {
    answer = res;
    void tab.handle(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}${CONSOLE_PATH}`;
  try {
    const req = request(url, (res) => res.pause());
    req.end();
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(tab.openTabs(), 1);
    assert.ok(answer!.writableLength < 3_000_000, `${answer!.writableLength} bytes waiting for a viewer that does not read`);
    req.destroy();
    tab.stop();
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test("a bridge without the console answers 502 and nothing else", async () => {
  const runtime: NodesRuntime = {
    async list() {
      return { nodes: [{ nodeId: "bridge-1", commands: [...BRIDGE_COMMANDS], connected: true }] };
    },
    async invoke() {
      return { page: 1 };
    },
  };
  const tab = new ConsoleTab(new Bridge(runtime, resolveConfig({})));
  const { server, url } = await serve(tab);
  try {
    const answer = await fetch(`${url}${CONSOLE_PATH}`);
    assert.equal(answer.status, 502);
    assert.match(await answer.text(), /did not give the console/);
    tab.stop();
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test("a tab's page gets a workload's output with its own capability, and nothing without one", async () => {
  const snapshot = { nodes: [], workloads: [{ id: "wl-1", node: "gpu-a" }] };
  const asked: Record<string, unknown>[] = [];
  const { bridge } = bridgeAnswering(
    () => snapshot,
    (params) => {
      asked.push(params);
      return {
        command: "workload.logs",
        results: [{ node: "gpu-a", ok: true, result: { workload: "wl-1", truncated: false, lines: [{ stream: "stdout", line: hostile }, { stream: "stderr", line: "y".repeat(5000) }] } }],
      };
    },
  );
  const tab = new ConsoleTab(bridge, 50);
  const { server, url } = await serve(tab);
  const logs = (body: unknown, init: RequestInit = {}) =>
    fetch(`${url}${TAB_LOGS_PATH}`, { method: "POST", body: typeof body === "string" ? body : JSON.stringify(body), ...init });
  try {
    // The capability is in the open tab's document, which stays open while the page asks.
    const { capability, kept } = await openTab(url);
    assert.equal(capability.length, 43);

    const answer = await logs({ tab: capability, workload: "wl-1" });
    assert.equal(answer.status, 200);
    assert.equal(answer.headers.get("access-control-allow-origin"), "*");
    const tail = (await answer.json()) as { node: string; lines: { stream: string; line: string }[] };
    assert.equal(tail.node, "gpu-a");
    assert.deepEqual(tail.lines[0], { stream: "stdout", line: hostile });
    assert.equal(tail.lines[1].line.length, 2000, "a line is cut at 2,000 characters");
    // What the bridge was asked: the read-only command on the node the snapshot names.
    assert.deepEqual(asked, [{ command: "workload.logs", nodes: ["gpu-a"], params: { workload: "wl-1", tail: 200 }, timeout_ms: 5000 }]);

    // At most once a second per tab.
    assert.equal((await logs({ tab: capability, workload: "wl-1" })).status, 429);
    await new Promise((resolve) => setTimeout(resolve, LOGS_EVERY_MS));
    // A workload not in the fleet's snapshot, a made-up or missing capability, extra fields,
    // another command, bad ids, a body too large, another method: refused, the bridge not asked.
    assert.equal((await logs({ tab: capability, workload: "wl-2" })).status, 404);
    assert.equal((await logs({ tab: "A".repeat(43), workload: "wl-1" })).status, 401);
    assert.equal((await logs({ workload: "wl-1" })).status, 400);
    assert.equal((await logs({ tab: capability, workload: "wl-1", command: "workload.stop" })).status, 400);
    assert.equal((await logs({ tab: capability, workload: "../wl-1" })).status, 400);
    assert.equal((await logs("not json")).status, 400);
    assert.equal((await logs({ tab: capability, workload: "x".repeat(600) })).status, 413);
    assert.equal((await fetch(`${url}${TAB_LOGS_PATH}?tab=${capability}&workload=wl-1`)).status, 405);
    // The page's request is a simple one (text, no custom header): no preflight is answered.
    assert.equal((await fetch(`${url}${TAB_LOGS_PATH}`, { method: "OPTIONS" })).status, 405);
    assert.equal(asked.length, 1, "only the one good request reached the bridge");

    // Once its tab closes, a capability is worth nothing.
    kept.destroy();
    const closing = Date.now();
    while (tab.openTabs() > 0 && Date.now() - closing < 5000) await new Promise((r) => setTimeout(r, 20));
    assert.equal((await logs({ tab: capability, workload: "wl-1" })).status, 401);
    assert.equal(asked.length, 1);
    tab.stop();
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test("a node's error reaches the tab's page as an error, not as output", async () => {
  const { bridge } = bridgeAnswering(
    () => ({ nodes: [], workloads: [{ id: "wl-1", node: "gpu-a" }] }),
    () => ({ results: [{ node: "gpu-a", ok: false, error: { code: "NOT_FOUND", message: "no workload wl-1" } }] }),
  );
  const tab = new ConsoleTab(bridge, 50);
  const { server, url } = await serve(tab);
  try {
    const { capability, kept } = await openTab(url);
    const answer = await fetch(`${url}${TAB_LOGS_PATH}`, { method: "POST", body: JSON.stringify({ tab: capability, workload: "wl-1" }) });
    assert.equal(answer.status, 502);
    assert.deepEqual(await answer.json(), { error: "gpu-a: NOT_FOUND: no workload wl-1" });
    kept.destroy();
    tab.stop();
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test("a logs request whose sender leaves before its body ends leaves nothing waiting", async () => {
  const { bridge } = bridgeAnswering(() => ({ nodes: [], workloads: [] }));
  const tab = new ConsoleTab(bridge, 50);
  tab.start();
  let handled: Promise<boolean> | undefined;
  const server = createServer((req, res) => {
    handled = tab.handleLogs(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const { connect } = await import("node:net");
    const socket = connect((server.address() as AddressInfo).port, "127.0.0.1");
    await new Promise<void>((resolve) => socket.on("connect", () => resolve()));
    socket.write(`POST ${TAB_LOGS_PATH} HTTP/1.1\r\nHost: gateway\r\nContent-Length: 400\r\n\r\n{"tab":`);
    const started = Date.now();
    while (!handled && Date.now() - started < 5000) await new Promise((r) => setTimeout(r, 10));
    socket.destroy();
    const outcome = await Promise.race([handled!.then(() => "done"), new Promise((r) => setTimeout(() => r("still waiting"), 2000))]);
    assert.equal(outcome, "done");
    tab.stop();
  } finally {
    server.closeAllConnections();
    server.close();
  }
});
