// The Fleet tab: the Clawbernetes console inside OpenClaw's Control UI.
//
// The Control UI shows a plugin tab as a sandboxed frame (scripts only, an opaque origin) of a
// plugin HTTP route, which the gateway authenticates (`auth: "gateway"`) with a short-lived
// cookie it grants to the frame's own load. That grant is cross-site from inside the frame, and
// a credentialed answer to an opaque origin could be read by any sandboxed frame on any site, so
// the page gets its data without calling back on it: the route answers with one long HTML
// document. It carries the console's page, style and script (the
// bridge's `console.page`, the very files a node serves) and then, every few seconds for as long
// as the tab is open, the bridge's `console.snapshot` written in as a script call (one snapshot
// for every open tab). Snapshot data
// is JSON with every `<`, `>`, `&` and line separator escaped, so no string from the fleet can
// end the script it is in; the page writes such strings as text, never as markup, and a
// content security policy lets only this answer's own scripts and style run.
//
// A workload's output is the one thing the viewer chooses. Each open tab gets a random capability,
// written into its document only; the page posts it with the workload's id to a second route
// (`auth: "plugin"`, no cookie, any origin), which answers while that tab is open, for a workload
// in the latest snapshot, at most once a second per tab. The plugin asks the bridge for the output
// (`fleet.invoke` of the read-only `workload.logs` on the node the snapshot names), never a
// command the page names.

import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";

import type { Bridge } from "./bridge.ts";

/** The route the plugin serves under (gateway auth, prefix match). */
export const CONSOLE_ROUTE = "/plugins/clawbernetes";
/** The Fleet tab's page. */
export const CONSOLE_PATH = `${CONSOLE_ROUTE}/console`;
/** How often a snapshot is written into an open tab. */
export const SNAPSHOT_EVERY_MS = 2_000;
/** Tabs open at once; more are answered 503 until one closes. */
export const MAX_OPEN_TABS = 16;
/** How long one tab's answer lasts before it asks to be opened again. */
export const TAB_LIFETIME_MS = 30 * 60_000;
/** Where a tab's page asks for a workload's output (plugin auth: the tab's capability). */
export const TAB_LOGS_PATH = "/plugins/clawbernetes-tab/logs";
/** Most bytes a logs request's body may have. */
export const MAX_LOGS_REQUEST_BYTES = 512;
/** Lines of a workload's output one answer holds, newest last. */
export const TAB_LOG_LINES = 200;
/** Least time between two logs answers to one tab. */
export const LOGS_EVERY_MS = 1_000;
/** Most characters of one output line sent to the page. */
const MAX_LINE_CHARS = 2_000;

/** The console's files as the bridge's `console.page` answers them. */
interface ConsoleFiles {
  page: string;
  script: string;
  style: string;
}

/** JSON safe to place inside an HTML `<script>` element. */
export function scriptJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, "\\u003c")
    .replace(/>/g, "\\u003e")
    .replace(/&/g, "\\u0026")
    .replace(/\u2028/g, "\\u2028")
    .replace(/\u2029/g, "\\u2029");
}

/**
 * The document's head and body up to the point where snapshots are written: the page with its
 * style and script placed inline under `nonce`, and the tab mode switched on before the script.
 */
export function tabDocument(files: ConsoleFiles, nonce: string, capability = ""): string {
  if (/<\/script/i.test(files.script) || /<\/style/i.test(files.style)) {
    throw new Error("the console's files cannot be placed inline");
  }
  const page = files.page
    .replace(/<link rel="stylesheet"[^>]*>/, () => `<style nonce="${nonce}">${files.style}</style>`)
    .replace(
      /<script src=[^>]*><\/script>/,
      () =>
        `<script nonce="${nonce}">window.clawConsoleHost = "tab"; window.clawConsoleTab = ${scriptJson({ logs: TAB_LOGS_PATH, capability })};</script>`,
    )
    .replace(/<\/body>\s*<\/html>\s*$/, "");
  return `${page}<script nonce="${nonce}">${files.script}</script>\n`;
}

/** One open tab: its answer, still being written. */
interface OpenTab {
  res: ServerResponse;
  nonce: string;
  /** The key of this tab in `tabs`, and the only proof its logs route accepts. */
  capability: string;
  closed: boolean;
  /** When this tab was last answered on its logs route, ms; and whether it waits for one now. */
  logsAt: number;
  logsBusy: boolean;
}

/** A workload's output asked for by a tab, waiting for the logs worker. */
interface LogsAsk {
  workload: string;
  node: string;
  answer: (status: number, body: unknown) => void;
}

/**
 * The Fleet tab's route handler, and the one feed that writes the bridge's snapshots into every
 * open tab. The feed runs as the plugin's service, not inside the tab's request: the gateway
 * grants a tab's request only `operator.read`, and asking a node (`nodes.invoke`) needs more. The
 * viewer never chooses what the feed asks: only `console.page` and `console.snapshot`, both
 * read-only commands. One snapshot per interval serves every open tab, and none is asked while no
 * tab is open.
 */
export class ConsoleTab {
  private readonly bridge: Bridge;
  private readonly everyMs: number;
  /** Open tabs by their capability. */
  private readonly tabs = new Map<string, OpenTab>();
  /** Where each workload of the latest snapshot runs (the node's name), by workload id. */
  private placed = new Map<string, string>();
  private readonly logsAsked: LogsAsk[] = [];
  private wakeLogs: () => void = () => {};
  private files: ConsoleFiles | undefined;
  private waiting: { resolve: (files: ConsoleFiles) => void; reject: (error: Error) => void }[] = [];
  private wake: () => void = () => {};
  private running = false;
  /** Requests waiting for the console's files: they count toward MAX_OPEN_TABS too. */
  private opening = 0;

  constructor(bridge: Bridge, everyMs: number = SNAPSHOT_EVERY_MS) {
    this.bridge = bridge;
    this.everyMs = everyMs;
  }

  /** Tabs open now. */
  openTabs(): number {
    return this.tabs.size;
  }

  /** Starts the feed (the service's start). */
  start(): void {
    if (this.running) return;
    this.running = true;
    void this.feed();
    void this.serveLogs();
  }

  /** Stops the feed and ends every open tab (the service's stop). */
  stop(): void {
    this.running = false;
    for (const tab of [...this.tabs.values()]) this.close(tab, "the Clawbernetes plugin stopped");
    for (const waiter of this.waiting.splice(0)) waiter.reject(new Error("the Clawbernetes plugin stopped"));
    for (const ask of this.logsAsked.splice(0)) ask.answer(503, { error: "the Clawbernetes plugin stopped" });
    this.wake();
    this.wakeLogs();
  }

  /** The gateway's route handler: true when it answered the request. */
  async handle(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    const path = new URL(req.url ?? "/", "http://gateway").pathname;
    if (path !== CONSOLE_PATH && path !== `${CONSOLE_PATH}/`) return false;
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { Allow: "GET, HEAD", "Content-Type": "text/plain; charset=utf-8" });
      res.end("the Fleet tab only reads\n");
      return true;
    }
    if (this.tabs.size + this.opening >= MAX_OPEN_TABS) {
      res.writeHead(503, { "Retry-After": "10", "Content-Type": "text/plain; charset=utf-8" });
      res.end(`${MAX_OPEN_TABS} Fleet tabs are open already; close one and reload\n`);
      return true;
    }
    let files: ConsoleFiles;
    this.opening += 1;
    try {
      files = this.files ?? (await this.page());
    } catch (error) {
      res.writeHead(502, { "Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store" });
      res.end(`The Clawbernetes bridge did not give the console: ${message(error)}\n`);
      return true;
    } finally {
      this.opening -= 1;
    }
    const nonce = randomBytes(18).toString("base64");
    res.writeHead(200, {
      "Content-Type": "text/html; charset=utf-8",
      "Cache-Control": "no-store",
      "X-Accel-Buffering": "no",
      "Content-Security-Policy": `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'`,
    });
    if (req.method === "HEAD") {
      res.end();
      return true;
    }
    const capability = randomBytes(32).toString("base64url");
    res.write(tabDocument(files, nonce, capability));
    const tab: OpenTab = { res, nonce, capability, closed: false, logsAt: 0, logsBusy: false };
    this.tabs.set(capability, tab);
    const lifetime = setTimeout(() => this.close(tab, "this view has been open 30 minutes: open the tab again"), TAB_LIFETIME_MS);
    const gone = () => {
      clearTimeout(lifetime);
      tab.closed = true;
      this.tabs.delete(capability);
    };
    req.on("close", gone);
    res.on("close", gone);
    this.wake();
    return true;
  }

  /** The console's files, as soon as the feed has them from the bridge. */
  private page(): Promise<ConsoleFiles> {
    if (!this.running) return Promise.reject(new Error("the Clawbernetes plugin's service is not running"));
    const had = new Promise<ConsoleFiles>((resolve, reject) => this.waiting.push({ resolve, reject }));
    this.wake();
    return had;
  }

  /** Every interval while a tab is open (or waits for the page): one snapshot, to every tab. */
  private async feed(): Promise<void> {
    while (this.running) {
      if (this.waiting.length > 0 && !this.files) {
        try {
          const answer = (await this.bridge.call("console.page")) as Partial<ConsoleFiles>;
          if (typeof answer?.page !== "string" || typeof answer.script !== "string" || typeof answer.style !== "string") {
            throw new Error("console.page answered without page, script and style");
          }
          this.files = { page: answer.page, script: answer.script, style: answer.style };
        } catch (error) {
          for (const waiter of this.waiting.splice(0)) waiter.reject(error instanceof Error ? error : new Error(String(error)));
        }
      }
      if (this.files) for (const waiter of this.waiting.splice(0)) waiter.resolve(this.files);
      if (this.tabs.size > 0) {
        let call: string;
        try {
          const snapshot = await this.bridge.call("console.snapshot");
          this.placed = placements(snapshot);
          call = `clawConsole.push(${scriptJson(snapshot)})`;
        } catch (error) {
          call = `clawConsole.lost(${scriptJson(`bridge: ${message(error)}`)})`;
        }
        for (const tab of this.tabs.values()) this.write(tab, call);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.everyMs);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = () => {};
    }
  }

  /** Writes `call` into `tab`, unless the tab has not yet taken what was written before: a
   * viewer that does not read skips snapshots instead of piling them up in the plugin. */
  private write(tab: OpenTab, call: string): void {
    if (!tab.closed && !tab.res.writableNeedDrain) tab.res.write(`<script nonce="${tab.nonce}">${call}</script>\n`);
  }

  private close(tab: OpenTab, why: string): void {
    this.write(tab, `clawConsole.lost(${scriptJson(why)})`);
    tab.closed = true;
    this.tabs.delete(tab.capability);
    tab.res.end();
  }

  /**
   * The logs route's handler (plugin auth: the request proves itself with an open tab's
   * capability, and carries no cookie): `POST {"tab": capability, "workload": id}` as text, so
   * that a sandboxed page can send it without a preflight. Answers `{workload, node, lines,
   * truncated}` or `{error}`, readable from any origin: without a capability it says nothing.
   */
  async handleLogs(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    const answer = (status: number, body: unknown, extra: Record<string, string> = {}) => {
      res.writeHead(status, {
        "Content-Type": "application/json; charset=utf-8",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Access-Control-Allow-Origin": "*",
        ...extra,
      });
      res.end(JSON.stringify(body));
    };
    if (req.method !== "POST") {
      answer(405, { error: "POST the tab's capability and a workload id" }, { Allow: "POST" });
      return true;
    }
    let body: string;
    try {
      body = await readBody(req, MAX_LOGS_REQUEST_BYTES);
    } catch (error) {
      if (!req.destroyed) answer(413, { error: message(error) }, { Connection: "close" });
      return true;
    }
    const asked = logsRequest(body);
    if (typeof asked === "string") {
      answer(400, { error: asked });
      return true;
    }
    const tab = this.tabs.get(asked.tab);
    if (!tab || tab.closed) {
      answer(401, { error: "this Fleet tab is closed or unknown: open the tab again" });
      return true;
    }
    const now = Date.now();
    if (tab.logsBusy || now - tab.logsAt < LOGS_EVERY_MS) {
      answer(429, { error: "one workload's output at a time, at most once a second" }, { "Retry-After": "1" });
      return true;
    }
    const node = this.placed.get(asked.workload);
    if (node === undefined) {
      answer(404, { error: `no workload ${asked.workload} in the fleet's latest snapshot` });
      return true;
    }
    tab.logsBusy = true;
    await new Promise<void>((resolve) => {
      this.logsAsked.push({
        workload: asked.workload,
        node,
        answer: (status, reply) => {
          tab.logsBusy = false;
          tab.logsAt = Date.now();
          answer(status, reply);
          resolve();
        },
      });
      this.wakeLogs();
    });
    return true;
  }

  /**
   * Asks the bridge for the output tabs wait for, one at a time. It runs as the plugin's service,
   * like the feed: a logs request carries no gateway scope, and the viewer never names the command.
   */
  private async serveLogs(): Promise<void> {
    while (this.running) {
      const ask = this.logsAsked.shift();
      if (!ask) {
        await new Promise<void>((resolve) => {
          this.wakeLogs = resolve;
        });
        this.wakeLogs = () => {};
        continue;
      }
      try {
        const fanned = await this.bridge.call("fleet.invoke", {
          command: "workload.logs",
          nodes: [ask.node],
          params: { workload: ask.workload, tail: TAB_LOG_LINES },
          timeout_ms: 5_000,
        });
        ask.answer(...logsAnswer(fanned, ask));
      } catch (error) {
        ask.answer(502, { error: `bridge: ${message(error)}` });
      }
    }
  }
}

/** Where each workload of `snapshot` runs: its node's name, by workload id. */
function placements(snapshot: unknown): Map<string, string> {
  const placed = new Map<string, string>();
  const workloads = (snapshot as { workloads?: unknown })?.workloads;
  if (!Array.isArray(workloads)) return placed;
  for (const w of workloads as { id?: unknown; node?: unknown }[]) {
    if (typeof w?.id === "string" && typeof w.node === "string") placed.set(w.id, w.node);
  }
  return placed;
}

/** A logs request's body, or what is wrong with it: exactly a tab's capability and a workload id. */
function logsRequest(body: string): { tab: string; workload: string } | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    return "the body is not JSON";
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) return "the body is not an object";
  const fields = parsed as Record<string, unknown>;
  const unknown = Object.keys(fields).filter((k) => k !== "tab" && k !== "workload");
  if (unknown.length > 0) return `unknown field ${JSON.stringify(unknown[0].slice(0, 32))}`;
  const { tab, workload } = fields;
  if (typeof tab !== "string" || !/^[A-Za-z0-9_-]{43}$/.test(tab)) return "tab: the capability in the tab's page";
  if (typeof workload !== "string" || !/^[A-Za-z0-9_-]{1,64}$/.test(workload)) {
    return "workload: a workload id (1 to 64 letters, digits, - or _)";
  }
  return { tab, workload };
}

/** The page's answer from the bridge's `fleet.invoke` of `workload.logs` on one node. */
function logsAnswer(fanned: unknown, ask: LogsAsk): [number, unknown] {
  const result = (fanned as { results?: unknown })?.results;
  const first = Array.isArray(result) ? (result[0] as Record<string, unknown> | undefined) : undefined;
  if (!first) return [502, { error: `${ask.node} did not answer` }];
  if (first.ok !== true) {
    const error = (first.error ?? {}) as { code?: unknown; message?: unknown };
    return [502, { error: `${ask.node}: ${String(error.code ?? "error")}: ${String(error.message ?? "").slice(0, 300)}` }];
  }
  const tail = (first.result ?? {}) as { lines?: unknown; truncated?: unknown };
  const lines = (Array.isArray(tail.lines) ? tail.lines : []).slice(-TAB_LOG_LINES).map((l) => {
    const line = l as { stream?: unknown; line?: unknown };
    return { stream: line.stream === "stderr" ? "stderr" : "stdout", line: String(line.line ?? "").slice(0, MAX_LINE_CHARS) };
  });
  return [200, { workload: ask.workload, node: ask.node, lines, truncated: tail.truncated === true }];
}

/** `req`'s body as text, refused once it passes `limit` bytes. */
function readBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new Error(`a logs request is at most ${limit} bytes`));
        req.pause();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    // Also a sender gone before its body ended (`aborted`): nothing is left waiting.
    req.on("error", reject);
  });
}

function message(error: unknown): string {
  return String((error as { message?: unknown })?.message ?? error).slice(0, 300);
}
