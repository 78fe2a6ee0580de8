// The Fleet tab: the Clawbernetes console inside OpenClaw's Control UI.
//
// The Control UI shows a plugin tab as a sandboxed frame (scripts only, an opaque origin) of a
// plugin HTTP route, which the gateway authenticates (`auth: "gateway"`) with a short-lived
// cookie it grants to the frame's own load. Requests made from inside that frame carry no
// credentials a browser would send by default, so the page cannot call back: instead the route
// answers with one long HTML document. It carries the console's page, style and script (the
// bridge's `console.page`, the very files a node serves) and then, every few seconds for as long
// as the tab is open, the bridge's `console.snapshot` written in as a script call (one snapshot
// for every open tab). Snapshot data
// is JSON with every `<`, `>`, `&` and line separator escaped, so no string from the fleet can
// end the script it is in; the page writes such strings as text, never as markup, and a
// content security policy lets only this answer's own scripts and style run.

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
export function tabDocument(files: ConsoleFiles, nonce: string): string {
  if (/<\/script/i.test(files.script) || /<\/style/i.test(files.style)) {
    throw new Error("the console's files cannot be placed inline");
  }
  const page = files.page
    .replace(/<link rel="stylesheet"[^>]*>/, () => `<style nonce="${nonce}">${files.style}</style>`)
    .replace(/<script src=[^>]*><\/script>/, () => `<script nonce="${nonce}">window.clawConsoleHost = "tab";</script>`)
    .replace(/<\/body>\s*<\/html>\s*$/, "");
  return `${page}<script nonce="${nonce}">${files.script}</script>\n`;
}

/** One open tab: its answer, still being written. */
interface OpenTab {
  res: ServerResponse;
  nonce: string;
  closed: boolean;
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
  private readonly tabs = new Set<OpenTab>();
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
  }

  /** Stops the feed and ends every open tab (the service's stop). */
  stop(): void {
    this.running = false;
    for (const tab of this.tabs) this.close(tab, "the Clawbernetes plugin stopped");
    for (const waiter of this.waiting.splice(0)) waiter.reject(new Error("the Clawbernetes plugin stopped"));
    this.wake();
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
      "Content-Security-Policy": `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; img-src data:; base-uri 'none'; form-action 'none'`,
    });
    if (req.method === "HEAD") {
      res.end();
      return true;
    }
    res.write(tabDocument(files, nonce));
    const tab: OpenTab = { res, nonce, closed: false };
    this.tabs.add(tab);
    const lifetime = setTimeout(() => this.close(tab, "this view has been open 30 minutes: open the tab again"), TAB_LIFETIME_MS);
    const gone = () => {
      clearTimeout(lifetime);
      tab.closed = true;
      this.tabs.delete(tab);
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
          call = `clawConsole.push(${scriptJson(await this.bridge.call("console.snapshot"))})`;
        } catch (error) {
          call = `clawConsole.lost(${scriptJson(`bridge: ${message(error)}`)})`;
        }
        for (const tab of this.tabs) this.write(tab, call);
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
    this.tabs.delete(tab);
    tab.res.end();
  }
}

function message(error: unknown): string {
  return String((error as { message?: unknown })?.message ?? error).slice(0, 300);
}
