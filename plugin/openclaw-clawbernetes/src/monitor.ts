// The background health service: polls `fleet.health` and records what changed since the last
// poll (a node joined, degraded, recovered or went away), keeping the latest snapshot and the
// recent transitions for the `clawbernetes.fleet-status` gateway method.

import type { Bridge, PluginConfig } from "./bridge.ts";

export interface Transition {
  at: number;
  node: string;
  from: string | null;
  to: string | null;
  kind: "joined" | "degraded" | "recovered" | "gone" | "changed";
}

export interface Logger {
  info(message: string): void;
  warn(message: string): void;
}

const MAX_TRANSITIONS = 200;

/** Each node's status in a `fleet.health` answer: its health, or `unreachable`. */
export function statuses(health: any): Map<string, string> {
  const out = new Map<string, string>();
  for (const n of health?.nodes ?? []) {
    out.set(n.node, n.ok ? (n.result?.status ?? "unknown") : "unreachable");
  }
  return out;
}

/** What changed between two polls. */
export function transitions(before: Map<string, string>, after: Map<string, string>, at: number): Transition[] {
  const out: Transition[] = [];
  for (const [node, to] of after) {
    const from = before.get(node) ?? null;
    if (from === to) continue;
    const kind =
      from === null ? "joined" : to === "healthy" ? "recovered" : from === "healthy" ? "degraded" : "changed";
    out.push({ at, node, from, to, kind });
  }
  for (const [node, from] of before) {
    if (!after.has(node)) out.push({ at, node, from, to: null, kind: "gone" });
  }
  return out;
}

export class HealthMonitor {
  private readonly bridge: Bridge;
  private readonly config: PluginConfig;
  private readonly logger: Logger;
  private timer: ReturnType<typeof setInterval> | undefined;
  private last = new Map<string, string>();
  snapshot: unknown = null;
  lastError: string | null = null;
  readonly recent: Transition[] = [];

  constructor(bridge: Bridge, config: PluginConfig, logger: Logger) {
    this.bridge = bridge;
    this.config = config;
    this.logger = logger;
  }

  /** One poll. */
  async poll(now = Date.now()): Promise<void> {
    try {
      const health = await this.bridge.call("fleet.health");
      const current = statuses(health);
      for (const t of transitions(this.last, current, now)) {
        this.recent.push(t);
        const line = `clawbernetes: ${t.node} ${t.kind} (${t.from ?? "-"} → ${t.to ?? "-"})`;
        if (t.kind === "degraded" || t.kind === "gone" || t.to === "unreachable") this.logger.warn(line);
        else this.logger.info(line);
      }
      this.recent.splice(0, Math.max(0, this.recent.length - MAX_TRANSITIONS));
      const bad = [...current.values()];
      const degraded = bad.filter((s) => s === "degraded" || s === "unhealthy").length;
      const unreachable = bad.filter((s) => s === "unreachable").length;
      if (degraded >= this.config.alertThresholds.degradedNodes && degraded > 0) {
        this.logger.warn(`clawbernetes alert: ${degraded} node(s) degraded or unhealthy`);
      }
      if (unreachable >= this.config.alertThresholds.unreachableNodes && unreachable > 0) {
        this.logger.warn(`clawbernetes alert: ${unreachable} node(s) unreachable`);
      }
      this.last = current;
      this.snapshot = health;
      this.lastError = null;
    } catch (error: any) {
      this.lastError = error?.message ?? String(error);
    }
  }

  start(): void {
    if (this.timer) return;
    void this.poll();
    this.timer = setInterval(() => void this.poll(), this.config.healthIntervalMs);
    this.timer.unref?.();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  status(): unknown {
    return { snapshot: this.snapshot, transitions: this.recent.slice(-50), lastError: this.lastError };
  }
}
