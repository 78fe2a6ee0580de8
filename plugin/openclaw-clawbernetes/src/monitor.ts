// The background health service: polls `fleet.health` (and the market node's leases) and
// records what changed since the last poll: a node joined, degraded, recovered or went away; a
// node's GPU errors rose; a lease could not be funded. It keeps the latest snapshot and the
// recent transitions for the `clawbernetes.fleet-status` gateway method, and logs alerts.
// Polls never overlap: the next is scheduled only when the last has finished, and stopping
// cancels the scheduled one and waits for the one in flight.

import type { FleetHealth, MarketLeases } from "./answers.ts";
import type { Bridge, PluginConfig } from "./bridge.ts";

export interface Transition {
  at: number;
  node: string;
  from: string | null;
  to: string | null;
  kind: "joined" | "degraded" | "recovered" | "gone" | "changed" | "gpu-errors" | "lease-funding";
}

/** The part of the gateway's `PluginLogger` the monitor uses. */
export interface Logger {
  info(message: string): void;
  warn(message: string): void;
}

/** The `clawbernetes.fleet-status` answer. */
export interface MonitorStatus {
  snapshot: FleetHealth | null;
  transitions: Transition[];
  lastError: string | null;
}

const MAX_TRANSITIONS = 200;

/** Each node's status in a `fleet.health` answer: its health, or `unreachable`. */
export function statuses(health: FleetHealth | null | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const n of health?.nodes ?? []) {
    out.set(n.node, n.ok ? (n.result?.status ?? "unknown") : "unreachable");
  }
  return out;
}

/** Each reachable node's count of GPU checks that are not healthy. */
export function gpuProblems(health: FleetHealth | null | undefined): Map<string, number> {
  const out = new Map<string, number>();
  for (const n of health?.nodes ?? []) {
    if (!n.ok) continue;
    const reasons = n.result?.reasons ?? [];
    out.set(n.node, reasons.filter((r) => String(r.component).startsWith("gpu")).length);
  }
  return out;
}

/** Leases that lapsed because they were not funded. */
export function fundingProblems(leases: MarketLeases | null | undefined): { id: string; reason: string }[] {
  return (leases?.leases ?? [])
    .filter((l) => l.state === "expired" && /fund/i.test(l.reason ?? ""))
    .map((l) => ({ id: l.lease_id, reason: l.reason ?? "" }));
}

/** How bad a node status is: a move to a worse one is a degradation. */
function severity(status: string): number {
  const order = ["healthy", "degraded", "unhealthy", "unreachable"];
  const at = order.indexOf(status);
  return at === -1 ? order.length : at;
}

/** What changed between two polls. */
export function transitions(before: Map<string, string>, after: Map<string, string>, at: number): Transition[] {
  const out: Transition[] = [];
  for (const [node, to] of after) {
    const from = before.get(node) ?? null;
    if (from === to) continue;
    const kind =
      from === null ? "joined" : to === "healthy" ? "recovered" : severity(to) > severity(from) ? "degraded" : "changed";
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
  private running = false;
  /** The next poll, scheduled once the last has finished. */
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** The poll under way; while there is one, no other starts. */
  private inFlight: Promise<void> | undefined;
  private last = new Map<string, string>();
  private lastGpu = new Map<string, number>();
  private fundingSeen = new Set<string>();
  snapshot: FleetHealth | null = null;
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
      const health = (await this.bridge.call("fleet.health")) as FleetHealth;
      const current = statuses(health);
      for (const t of transitions(this.last, current, now)) {
        this.recent.push(t);
        const line = `clawbernetes: ${t.node} ${t.kind} (${t.from ?? "-"} → ${t.to ?? "-"})`;
        if (t.kind === "degraded" || t.kind === "gone" || t.to === "unreachable") this.logger.warn(line);
        else this.logger.info(line);
      }
      const gpu = gpuProblems(health);
      for (const [node, count] of gpu) {
        const before = this.lastGpu.get(node) ?? 0;
        if (count > before) {
          this.recent.push({ at: now, node, from: String(before), to: String(count), kind: "gpu-errors" });
          this.logger.warn(`clawbernetes: GPU problems on ${node} rose from ${before} to ${count}`);
        }
      }
      this.lastGpu = gpu;
      try {
        const leases = (await this.bridge.call("market.leases", {})) as MarketLeases;
        for (const problem of fundingProblems(leases)) {
          if (this.fundingSeen.has(problem.id)) continue;
          this.fundingSeen.add(problem.id);
          this.recent.push({ at: now, node: problem.id, from: null, to: "expired", kind: "lease-funding" });
          this.logger.warn(`clawbernetes: lease ${problem.id} was not funded: ${problem.reason}`);
        }
      } catch {
        // No market node behind the bridge: nothing to watch there.
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
    } catch (error) {
      const message = error !== null && typeof error === "object" && "message" in error ? error.message : undefined;
      this.lastError = message === undefined || message === null ? String(error) : String(message);
    }
  }

  /** Polls now, then `healthIntervalMs` after each poll has finished, until stopped. */
  start(): void {
    if (this.running) return;
    this.running = true;
    // After a stop whose poll is still under way, that poll schedules the next when it ends.
    if (!this.inFlight) this.cycle();
  }

  private cycle(): void {
    this.timer = undefined;
    const polling: Promise<void> = this.poll().finally(() => {
      if (this.inFlight === polling) this.inFlight = undefined;
      if (!this.running) return;
      this.timer = setTimeout(() => this.cycle(), this.config.healthIntervalMs);
      this.timer.unref?.(); // the gateway's lifetime is not the monitor's to extend
    });
    this.inFlight = polling;
  }

  /** Stops polling: cancels the next poll and resolves once the one under way has finished. */
  async stop(): Promise<void> {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.inFlight;
  }

  /** What `clawbernetes.fleet-status` answers: the latest snapshot and recent transitions. */
  status(): MonitorStatus {
    return { snapshot: this.snapshot, transitions: this.recent.slice(-50), lastError: this.lastError };
  }
}
