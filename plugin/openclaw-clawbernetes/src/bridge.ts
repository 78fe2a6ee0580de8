// The one way the plugin reaches the fleet: `api.runtime.nodes.invoke` on the Clawbernetes
// bridge node, one call per tool. The bridge is the node named in the plugin config
// (`bridgeNode`, a node id or display name), or else the connected node that declares
// `fleet.status`.

import { createHash } from "node:crypto";

/**
 * The part of `api.runtime.nodes` the plugin uses (the gateway's `PluginRuntime["nodes"]` fits it;
 * index.ts passes that in, so the compiler checks the fit). Tests pass stubs.
 */
export interface NodesRuntime {
  list(options?: { connected?: boolean }): Promise<NodeInfo[] | { nodes: NodeInfo[] }>;
  invoke(request: {
    nodeId: string;
    command: string;
    params?: unknown;
    timeoutMs?: number;
    idempotencyKey?: string;
  }): Promise<unknown>;
}

export interface NodeInfo {
  nodeId: string;
  displayName?: string;
  commands?: string[];
  connected?: boolean;
}

export interface PluginConfig {
  bridgeNode?: string;
  /** An API key (`auth.create_key`) every call carries; the bridge and each node check it. */
  apiKey?: string;
  invokeTimeoutMs: number;
  healthIntervalMs: number;
  alertThresholds: { degradedNodes: number; unreachableNodes: number };
}

export const DEFAULT_CONFIG: PluginConfig = {
  invokeTimeoutMs: 30_000,
  healthIntervalMs: 30_000,
  alertThresholds: { degradedNodes: 1, unreachableNodes: 1 },
};

/** The bridge's commands, as it declares them to the gateway. */
export const BRIDGE_COMMANDS = [
  "fleet.capabilities",
  "fleet.status",
  "fleet.gpus",
  "fleet.deploy",
  "fleet.workloads",
  "fleet.invoke",
  "fleet.health",
  "fleet.drain",
  "market.offers",
  "market.bid",
  "market.leases",
  "market.lease.cancel",
  "market.history",
  "wallet.balance",
  "console.snapshot",
  "console.page",
  "deploy.create",
  "deploy.update",
  "deploy.status",
  "deploy.list",
  "deploy.history",
  "deploy.rollback",
  "deploy.promote",
  "deploy.pause",
  "deploy.resume",
  "deploy.delete",
  "job.create",
  "job.status",
  "job.list",
  "job.logs",
  "job.delete",
  "cron.create",
  "cron.list",
  "cron.status",
  "cron.trigger",
  "cron.suspend",
  "cron.resume",
  "cron.delete",
  "cron.logs",
  "autoscale.create",
  "autoscale.status",
  "autoscale.adjust",
  "autoscale.delete",
  "config.create",
  "config.update",
  "config.get",
  "config.list",
  "config.delete",
  "secret.create",
  "secret.rotate",
  "secret.describe",
  "secret.list",
  "secret.delete",
  "service.create",
  "service.list",
  "service.delete",
  "ingress.create",
  "ingress.list",
  "ingress.delete",
  "policy.create",
  "policy.list",
  "policy.delete",
  "namespace.create",
  "namespace.list",
  "namespace.delete",
  "auth.create_key",
  "auth.list_keys",
  "auth.revoke_key",
] as const;

export type BridgeCommand = (typeof BRIDGE_COMMANDS)[number];

/** A failed bridge call, with the node's error code when there is one. */
export class BridgeError extends Error {
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.code = code;
    this.name = "BridgeError";
  }
}

export function resolveConfig(raw: unknown): PluginConfig {
  const given = (raw ?? {}) as Partial<PluginConfig>;
  return {
    ...DEFAULT_CONFIG,
    ...given,
    alertThresholds: { ...DEFAULT_CONFIG.alertThresholds, ...(given.alertThresholds ?? {}) },
  };
}

/**
 * The params a call sends: with the configured API key in the reserved field `api_key`, which
 * the bridge takes out before the command reads its params.
 */
export function withApiKey(params: Record<string, unknown>, apiKey: string | undefined): Record<string, unknown> {
  return apiKey ? { ...params, api_key: apiKey } : params;
}

/** The idempotency key of a tool call: its id, hashed when longer than nodes accept (128). */
export function idempotencyKey(toolCallId: string): string {
  const key = `claw-${toolCallId}`;
  return key.length <= 128 ? key : `claw-sha256-${createHash("sha256").update(toolCallId).digest("hex")}`;
}

let calls = 0;

export class Bridge {
  private readonly nodes: NodesRuntime;
  private readonly config: PluginConfig;

  constructor(nodes: NodesRuntime, config: PluginConfig) {
    this.nodes = nodes;
    this.config = config;
  }

  /** The bridge's node id. */
  async nodeId(): Promise<string> {
    const listed = await this.nodes.list({ connected: true });
    const nodes = Array.isArray(listed) ? listed : (listed?.nodes ?? []);
    const wanted = this.config.bridgeNode;
    const found = wanted
      ? nodes.find((n) => n.nodeId === wanted || n.displayName === wanted)
      : nodes.find((n) => (n.commands ?? []).includes("fleet.status"));
    if (!found) {
      throw new BridgeError(
        "NOT_CONNECTED",
        wanted
          ? `the Clawbernetes bridge node "${wanted}" is not connected to this gateway`
          : "no connected node offers fleet.status: start claw-bridge and approve its commands (openclaw nodes pending)",
      );
    }
    return found.nodeId;
  }

  /**
   * Calls one bridge command; the command's result, or a BridgeError. A tool passes its tool
   * call's id, so that a retried call (the gateway's, or the agent's after a bridge restart)
   * reaches the nodes with the same idempotency key and does not start the work twice.
   */
  async call(command: BridgeCommand, params: Record<string, unknown> = {}, toolCallId?: string): Promise<unknown> {
    const nodeId = await this.nodeId();
    let answer: unknown;
    try {
      answer = await this.nodes.invoke({
        nodeId,
        command,
        params: withApiKey(params, this.config.apiKey),
        timeoutMs: this.config.invokeTimeoutMs,
        idempotencyKey: toolCallId ? idempotencyKey(toolCallId) : `claw-${process.pid}-${Date.now()}-${++calls}`,
      });
    } catch (error) {
      // The gateway's node errors carry the node's own error under details.nodeError.
      const nodeError = fields(fields(error)?.details)?.nodeError ?? fields(error)?.nodeError;
      throw new BridgeError(
        text(fields(nodeError)?.code ?? fields(error)?.code) ?? "UNAVAILABLE",
        text(fields(nodeError)?.message ?? fields(error)?.message) ?? String(error),
      );
    }
    const reply = fields(answer);
    if (reply && "ok" in reply && reply.ok === false) {
      const error = fields(reply.error ?? {});
      throw new BridgeError(text(error?.code) ?? "UNAVAILABLE", text(error?.message) ?? "the bridge refused the call");
    }
    if (reply && "payload" in reply) {
      return reply.payload ?? (reply.payloadJSON ? JSON.parse(String(reply.payloadJSON)) : null);
    }
    return answer;
  }
}

/** `value`'s fields when it is an object (an error, a gateway reply), else undefined. */
function fields(value: unknown): Record<string, unknown> | undefined {
  return value !== null && typeof value === "object" ? (value as Record<string, unknown>) : undefined;
}

/** A field as text: absent (null or undefined) stays absent. */
function text(value: unknown): string | undefined {
  return value === undefined || value === null ? undefined : String(value);
}
