// The plugin against a stub runtime: every tool is one bridge call with the params its schema
// allows, renders the bridge's answer, and turns failures into readable errors. Fixtures are
// built from contract/bridge-fields.json, the fields the bridge's end-to-end test checks in
// real answers, so a renderer that reads anything else shows up as `undefined`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import type { OpenClawPluginApi } from "openclaw/plugin-sdk/plugin-entry";

import { Bridge, BRIDGE_COMMANDS, resolveConfig, type NodeInfo, type NodesRuntime } from "../src/bridge.ts";
import type { FleetHealth, MarketLeases } from "../src/answers.ts";
import { fleetTools, type Tool } from "../src/tools.ts";
import { HealthMonitor, statuses, transitions } from "../src/monitor.ts";
import { loadEntry } from "./openclaw-sdk.ts";

const root = new URL("..", import.meta.url);
const contract = JSON.parse(readFileSync(new URL("contract/bridge-fields.json", root), "utf8"));
const manifest = JSON.parse(readFileSync(new URL("openclaw.plugin.json", root), "utf8"));

type Fields = Record<string, unknown>;
type InvokeRequest = Parameters<NodesRuntime["invoke"]>[0];

/** An object holding every contracted path of `command`, with sample values. */
function fixture(command: string): Fields {
  const out: Fields = {};
  for (const path of contract[command] as string[]) {
    let at = out;
    const steps = path.split(".");
    steps.forEach((step, i) => {
      const last = i === steps.length - 1;
      if (step.endsWith("[]")) {
        const key = step.slice(0, -2);
        at[key] ??= [{}];
        if (last) at[key] = [`sample-${key}`];
        else at = (at[key] as Fields[])[0];
      } else if (last) {
        at[step] ??= step.includes("ok") ? true : 2;
      } else {
        at[step] ??= {};
        at = at[step] as Fields;
      }
    });
  }
  return out;
}

const bridgeNode: NodeInfo = { nodeId: "bridge-1", displayName: "clawbernetes-fleet", commands: [...BRIDGE_COMMANDS], connected: true };

/** A gateway's `runtime.nodes` with one bridge answering `answers` (an Error is thrown). */
function stub(answers: Record<string, unknown>, nodes: NodeInfo[] = [bridgeNode]): { calls: InvokeRequest[]; runtime: NodesRuntime } {
  const calls: InvokeRequest[] = [];
  return {
    calls,
    runtime: {
      async list() {
        return { nodes };
      },
      async invoke(request) {
        calls.push(request);
        const answer = answers[request.command];
        if (answer instanceof Error) throw answer;
        return { ok: true, nodeId: request.nodeId, command: request.command, payload: answer, payloadJSON: JSON.stringify(answer) };
      },
    },
  };
}

/** Fails under CLAW_TEST_STRICT=1, as the project's tests that need an installed tool do; else skips. */
function skipOrFail(t: { skip(message: string): void }, why: string): void {
  if (process.env.CLAW_TEST_STRICT === "1") assert.fail(`the plugin entry needs an installed OpenClaw: ${why}`);
  t.skip(why);
}

const toolCommands: Record<string, string> = {
  claw_fleet_status: "fleet.status",
  claw_gpu_inventory: "fleet.gpus",
  claw_deploy: "fleet.deploy",
  claw_workloads: "fleet.workloads",
  claw_multi_invoke: "fleet.invoke",
  claw_node_health: "fleet.health",
  claw_drain: "fleet.drain",
  claw_market_offers: "market.offers",
  claw_market_bid: "market.bid",
  claw_rent_out: "fleet.invoke",
  claw_leases: "market.leases",
  claw_lease_end: "market.lease.cancel",
  claw_wallet: "wallet.balance",
  claw_deployment_create: "deploy.create",
  claw_deployment_update: "deploy.update",
  claw_deployment_status: "deploy.status",
  claw_deployment_promote: "deploy.promote",
  claw_deployment_rollback: "deploy.rollback",
  claw_deployments: "deploy.list",
  claw_deployment_delete: "deploy.delete",
};

test("the entry is the SDK's definePluginEntry of the manifest's plugin", async (t) => {
  const loaded = await loadEntry();
  if ("missing" in loaded) return skipOrFail(t, loaded.missing);
  const { entry } = loaded;
  assert.equal(entry.id, manifest.id);
  assert.equal(typeof entry.register, "function");
  // definePluginEntry adds the config schema accessor; the gateway validates config with the
  // manifest's schema, so the entry leaves it at the SDK's default.
  assert.equal(typeof entry.configSchema.safeParse, "function");
});

test("the manifest declares exactly the tools the plugin registers, with a config schema", async (t) => {
  const loaded = await loadEntry();
  if ("missing" in loaded) return skipOrFail(t, loaded.missing);
  const registered: string[] = [];
  const services: string[] = [];
  const methods: string[] = [];
  const policies: string[][] = [];
  // The part of the API register uses; src/index.ts is compiled against the whole type.
  const api = {
    pluginConfig: {},
    runtime: { nodes: stub({}).runtime },
    logger: { info() {}, warn() {}, error() {} },
    registerTool: (tool: Tool) => void registered.push(tool.name),
    registerService: (service: { id: string }) => void services.push(service.id),
    registerGatewayMethod: (method: string) => void methods.push(method),
    registerNodeInvokePolicy: (policy: { commands: string[] }) => void policies.push(policy.commands),
  };
  loaded.entry.register(api as unknown as OpenClawPluginApi);
  assert.deepEqual([...registered].sort(), [...manifest.contracts.tools].sort());
  assert.deepEqual(services, ["clawbernetes-health"]);
  assert.deepEqual(methods, ["clawbernetes.fleet-status"]);
  assert.deepEqual(policies, [[...BRIDGE_COMMANDS]]);
  assert.equal(manifest.id, "clawbernetes");
  assert.equal(manifest.activation.onStartup, true);
  assert.equal(manifest.configSchema.additionalProperties, false);
  for (const name of registered) assert.ok(toolCommands[name], `${name} has a bridge command`);
});

test("each tool is one bridge call with only its schema's params, rendered without gaps", async () => {
  const answers: Record<string, unknown> = {};
  for (const command of Object.keys(contract)) {
    if (command !== "description") answers[command] = fixture(command);
  }
  answers["market.offers"] = { offers: [{ node: "n1", gpus: 1, gpu_model: "NVIDIA H100 80GB HBM3", price_per_gpu_hour: "1.2", min_hours: 1, max_hours: 24, reputation: 50, simulated: true }] };
  answers["market.bid"] = { matched: false, explanation: "no offer matches: price", nearest: [{ gpus: 1, gpu_model: "H100", price_per_gpu_hour: "1.2", fails: ["price"] }] };
  answers["market.leases"] = { leases: [{ lease_id: "ls-1", side: "buyer", state: "running", amount: "1.2" }] };
  answers["wallet.balance"] = { address: "W", molt: "100", sol: "5.000000000" };
  const { runtime, calls } = stub(answers);
  const tools = fleetTools(new Bridge(runtime, resolveConfig({})));
  for (const tool of tools) {
    const params: Record<string, unknown> = { unexpected: true };
    for (const key of tool.parameters.required) params[key] = key === "gpus" || key === "hours" ? 1 : key === "models" ? ["H100"] : "x";
    const before = calls.length;
    const result = await tool.execute("call-1", params);
    assert.equal(calls.length, before + 1, `${tool.name} makes one call`);
    const call = calls.at(-1)!;
    assert.equal(call.command, toolCommands[tool.name]);
    assert.equal(call.nodeId, "bridge-1");
    assert.ok(!("unexpected" in (call.params as Fields)), `${tool.name} drops unknown params`);
    assert.equal(result.content[0].type, "text");
    assert.ok(!result.content[0].text.includes("undefined"), `${tool.name}: ${result.content[0].text}`);
    assert.deepEqual(result.details, answers[call.command]);
  }
});

test("a node's error comes back as text the agent can act on", async () => {
  const nodeError = Object.assign(new Error("UNAVAILABLE: node error"), {
    details: { nodeError: { code: "NOT_FOUND", message: "no node \"n9\" in the fleet" } },
  });
  const { runtime } = stub({ "fleet.drain": nodeError });
  const drain = fleetTools(new Bridge(runtime, resolveConfig({}))).find((t) => t.name === "claw_drain")!;
  const result = await drain.execute("c", { node: "n9" });
  assert.equal(result.content[0].text, 'error NOT_FOUND: no node "n9" in the fleet');
  assert.deepEqual(result.details, { error: { code: "NOT_FOUND", message: 'no node "n9" in the fleet' } });
});

test("without a connected bridge the tools say how to start one", async () => {
  const { runtime } = stub({}, []);
  const status = fleetTools(new Bridge(runtime, resolveConfig({})))[0];
  const result = await status.execute("c", {});
  assert.match(result.content[0].text, /^error NOT_CONNECTED: .*claw-bridge/);
  const named = fleetTools(new Bridge(stub({}).runtime, resolveConfig({ bridgeNode: "other" })))[0];
  assert.match((await named.execute("c", {})).content[0].text, /"other" is not connected/);
});

test("the health monitor records joins, degradations, recoveries, departures, GPU errors and unfunded leases", async () => {
  const before = new Map([["n1", "healthy"], ["n2", "healthy"], ["n3", "degraded"], ["n5", "degraded"], ["n6", "unhealthy"]]);
  const after = new Map([["n1", "healthy"], ["n2", "degraded"], ["n3", "healthy"], ["n4", "healthy"], ["n5", "unhealthy"], ["n6", "degraded"]]);
  const kinds = transitions(before, after, 1).map((t) => `${t.node}:${t.kind}`).sort();
  // Worse is a degradation from any status; better but not healthy is a change.
  assert.deepEqual(kinds, ["n2:degraded", "n3:recovered", "n4:joined", "n5:degraded", "n6:changed"]);
  assert.deepEqual(transitions(after, new Map([["n1", "healthy"]]), 2).map((t) => t.kind).sort(), ["gone", "gone", "gone", "gone", "gone"]);

  let health: FleetHealth = { summary: { healthy: 1 }, nodes: [{ node: "n1", ok: true, result: { status: "healthy", reasons: [] } }] };
  let leases: MarketLeases = { leases: [] };
  const { runtime } = stub({});
  runtime.invoke = async (request) => ({ ok: true, payload: request.command === "fleet.health" ? health : leases });
  const warnings: string[] = [];
  const monitor = new HealthMonitor(new Bridge(runtime, resolveConfig({})), resolveConfig({}), { info() {}, warn: (m) => warnings.push(m) });
  await monitor.poll(1);
  health = {
    summary: { degraded: 1 },
    nodes: [{ node: "n1", ok: true, result: { status: "degraded", reasons: [{ component: "gpu:GPU-1", status: "degraded", detail: "2 critical Xid errors" }] } }],
  };
  leases = { leases: [{ lease_id: "ls-9", state: "expired", reason: "the escrow was not funded in time" }, { lease_id: "ls-8", state: "settled" }] };
  await monitor.poll(2);
  await monitor.poll(3);
  health = { summary: { unreachable: 1 }, nodes: [{ node: "n1", ok: false, error: { code: "TIMEOUT", message: "t" } }] };
  await monitor.poll(4);
  assert.deepEqual(statuses(health).get("n1"), "unreachable");
  const status = monitor.status();
  assert.deepEqual(status.transitions.map((t) => t.kind), ["joined", "degraded", "gpu-errors", "lease-funding", "degraded"]);
  assert.ok(warnings.some((w) => w.includes("unreachable")), warnings.join("\n"));
  assert.ok(warnings.some((w) => w.includes("GPU problems on n1 rose from 0 to 1")), warnings.join("\n"));
  assert.ok(warnings.some((w) => w.includes("lease ls-9 was not funded")), warnings.join("\n"));
});
