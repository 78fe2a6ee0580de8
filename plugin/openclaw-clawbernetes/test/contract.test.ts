// The plugin against the command contract the Rust side generates from its one definition per
// command (contract/commands.json, kept current by a test of the claw-api crate): the plugin's
// command list is the bridge's, and every tool sends params the command accepts, field by field,
// so a renamed command or field fails here when the plugin did not follow.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { Bridge, BRIDGE_COMMANDS, idempotencyKey, resolveConfig, type NodesRuntime } from "../src/bridge.ts";
import type { Schema } from "../src/schema.ts";
import { fleetTools } from "../src/tools.ts";

/** The JSON Schema subset schemars produces, as contract/commands.json holds it. */
interface JsonSchema {
  $ref?: string;
  $defs?: Record<string, JsonSchema>;
  definitions?: Record<string, JsonSchema>;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  allOf?: JsonSchema[];
  const?: unknown;
  enum?: unknown[];
  type?: string | string[];
  minimum?: number;
  maximum?: number;
  items?: JsonSchema;
  properties?: Record<string, JsonSchema | boolean>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
}

interface Command {
  name: string;
  role: string;
  params: JsonSchema;
  answer?: JsonSchema;
}

const root = new URL("..", import.meta.url);
const contract: { node: Command[]; bridge: Command[] } = JSON.parse(
  readFileSync(new URL("contract/commands.json", root), "utf8"),
);
/** The fields of the bridge's answers the plugin reads, by command (see plugin.test.ts). */
const readFields: Record<string, string[] | string> = JSON.parse(
  readFileSync(new URL("contract/bridge-fields.json", root), "utf8"),
);

type InvokeRequest = Parameters<NodesRuntime["invoke"]>[0];

function commandOf(side: "node" | "bridge", name: string): Command {
  const found = contract[side].find((c) => c.name === name);
  assert.ok(found, `the ${side} has no command ${name}`);
  return found;
}

/** The errors of `value` against `schema` (the JSON Schema subset schemars produces). */
function check(value: unknown, schema: JsonSchema | boolean | undefined, root: JsonSchema, at = "params"): string[] {
  if (schema === true || schema === undefined) return [];
  if (schema === false) return [`${at}: not allowed`];
  if (schema.$ref) {
    const name = String(schema.$ref).replace(/^#\/(\$defs|definitions)\//, "");
    const target = (root.$defs ?? root.definitions ?? {})[name];
    assert.ok(target, `unresolved ${schema.$ref}`);
    return check(value, target, root, at);
  }
  for (const key of ["anyOf", "oneOf"] as const) {
    const choices = schema[key];
    if (choices) {
      const fits = choices.some((s) => check(value, s, root, at).length === 0);
      if (!fits) return [`${at}: ${JSON.stringify(value)} fits none of ${key}`];
    }
  }
  if (schema.allOf) {
    const errors = schema.allOf.flatMap((s) => check(value, s, root, at));
    if (errors.length) return errors;
  }
  if ("const" in schema && value !== schema.const) return [`${at}: must be ${JSON.stringify(schema.const)}`];
  if (schema.enum && !schema.enum.includes(value)) return [`${at}: ${JSON.stringify(value)} is not one of ${schema.enum.join(", ")}`];
  if (schema.type) {
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    const actual =
      value === null ? "null" : Array.isArray(value) ? "array" : Number.isInteger(value) ? "integer" : typeof value;
    const ok = types.some((t) => t === actual || (t === "number" && actual === "integer"));
    if (!ok) return [`${at}: ${actual} where ${types.join(" or ")} is wanted`];
  }
  const errors: string[] = [];
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) errors.push(`${at}: below ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) errors.push(`${at}: above ${schema.maximum}`);
  }
  const items = schema.items;
  if (Array.isArray(value) && items) {
    value.forEach((item, i) => errors.push(...check(item, items, root, `${at}[${i}]`)));
  }
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const properties = schema.properties ?? {};
    for (const required of schema.required ?? []) {
      if (!(required in value)) errors.push(`${at}.${required}: required`);
    }
    for (const [key, field] of Object.entries(value)) {
      if (key in properties) errors.push(...check(field, properties[key], root, `${at}.${key}`));
      else if (schema.additionalProperties === false) errors.push(`${at}.${key}: unknown field`);
      else if (typeof schema.additionalProperties === "object") {
        errors.push(...check(field, schema.additionalProperties, root, `${at}.${key}`));
      }
    }
  }
  return errors;
}

/** A value for every property of a tool's parameter schema; `choice` picks among enum values. */
function sample(schema: Schema, name: string, choice: number): unknown {
  switch (schema.type) {
    case "string":
      if (schema.enum) return schema.enum[choice % schema.enum.length];
      if (name === "command") return "node.health"; // fleet.invoke names a node command
      return name.includes("price") ? "1.5" : `sample-${name}`;
    case "integer":
      return Math.max(schema.minimum ?? 1, 1);
    case "number":
      return 1.5;
    case "boolean":
      return choice % 2 === 0;
    case "array":
      return [sample(schema.items, name, choice)];
    case "object": {
      if (!("properties" in schema)) return name === "params" ? {} : { SAMPLE_KEY: "value" };
      const out: Record<string, unknown> = {};
      for (const [key, field] of Object.entries(schema.properties)) out[key] = sample(field, key, choice);
      return out;
    }
  }
}

function recordingBridge(): { calls: InvokeRequest[]; bridge: Bridge } {
  const calls: InvokeRequest[] = [];
  const runtime: NodesRuntime = {
    async list() {
      return { nodes: [{ nodeId: "bridge-1", commands: [...BRIDGE_COMMANDS], connected: true }] };
    },
    async invoke(request) {
      calls.push(request);
      return { ok: true, payload: {} };
    },
  };
  return { calls, bridge: new Bridge(runtime, resolveConfig({})) };
}

test("the plugin's bridge commands are exactly the bridge's, in its order", () => {
  assert.deepEqual([...BRIDGE_COMMANDS], contract.bridge.map((c) => c.name));
});

test("every tool sends params its bridge command accepts, for every choice its schema offers", async () => {
  const { calls, bridge } = recordingBridge();
  for (const tool of fleetTools(bridge)) {
    const properties: Schema[] = Object.values(tool.parameters.properties);
    const choices = Math.max(2, ...properties.map((p) => (p.type === "string" ? (p.enum?.length ?? 0) : 0)));
    for (let choice = 0; choice < choices; choice++) {
      const params = sample(tool.parameters, tool.name, choice);
      await tool.execute(`call-${tool.name}-${choice}`, params);
      const call = calls.at(-1)!;
      const command = commandOf("bridge", call.command);
      const errors = check(call.params, command.params, command.params);
      assert.deepEqual(errors, [], `${tool.name} → ${call.command} with ${JSON.stringify(call.params)}`);
      if (call.command === "fleet.invoke") {
        // The node command it names, with the params it passes on.
        const sent = call.params as { command: string; params?: unknown };
        const inner = commandOf("node", sent.command);
        const innerErrors = check(sent.params ?? {}, inner.params, inner.params);
        assert.deepEqual(innerErrors, [], `${tool.name} → ${sent.command} with ${JSON.stringify(sent.params)}`);
      }
    }
  }
});

test("autoscaler metrics and a selling window reach their commands in the shapes the schemas accept", async () => {
  const { calls, bridge } = recordingBridge();
  const tools = fleetTools(bridge);
  const create = tools.find((t) => t.name === "claw_autoscale_create")!;
  const base = { name: "web-load", deployment: "web", min: 1, max: 8, target: 70 };
  const metrics = [
    { metric_type: "gpu_utilization" },
    { metric_type: "cpu", metric_path: "/ignored", metric_port: 1 },
    { metric_type: "file", metric_path: "/run/load" },
    { metric_type: "http", metric_port: 9100 },
    { metric_type: "http", metric_port: 9100, metric_path: "/load" },
  ];
  const command = commandOf("bridge", "autoscale.create");
  for (const metric of metrics) {
    await create.execute(`call-${metric.metric_type}`, { ...base, ...metric, cooldown_secs: 30 });
    const sent = calls.at(-1)!.params as { spec: { metric: { type: string } } };
    assert.equal(sent.spec.metric.type, metric.metric_type);
    assert.deepEqual(check(sent, command.params, command.params), [], JSON.stringify(sent));
  }
  // The checker sees a metric the bridge refuses: a file metric without its path.
  await create.execute("call-no-path", { ...base, metric_type: "file" });
  assert.notDeepEqual(check(calls.at(-1)!.params, command.params, command.params), []);

  const rentOut = tools.find((t) => t.name === "claw_rent_out")!;
  const sell = commandOf("node", "market.sell");
  await rentOut.execute("call-window", { price_per_gpu_hour: "0.95", window_from: "08:00", window_until: "18:00", time_zone: "Europe/Paris" });
  const windowed = (calls.at(-1)!.params as { params: { window: unknown } }).params;
  assert.deepEqual(windowed.window, { from: "08:00", until: "18:00", time_zone: "Europe/Paris" });
  assert.deepEqual(check(windowed, sell.params, sell.params), []);
});

test("a cron job reaches cron.create with its job, or with its bid and no job, in shapes the schema accepts", async () => {
  const { calls, bridge } = recordingBridge();
  const create = fleetTools(bridge).find((t) => t.name === "claw_cron_create")!;
  const command = commandOf("bridge", "cron.create");
  const base = { name: "h100-tonight", schedule: "0 22 * * *", time_zone: "Europe/Paris", image: "trainer:1", command: ["train"], env: { A: "1" } };
  const bid = { bid_node: "12D3KooWbuyer", budget: "10", bid_models: ["H100"], bid_gpus: 1, bid_hours: 4, bid_max_price: "2.5", bid_accept_simulated: true };
  await create.execute("call-job", { ...base, gpus: 1, completions: 2 });
  const job = calls.at(-1)!.params as { spec: Record<string, unknown> };
  assert.ok(job.spec.job && !("bid" in job.spec), JSON.stringify(job));
  assert.deepEqual(check(job, command.params, command.params), [], JSON.stringify(job));
  await create.execute("call-bid", { ...base, ...bid, gpus: 1, completions: 2 });
  const bidding = calls.at(-1)!.params as { spec: Record<string, unknown> };
  assert.ok(bidding.spec.bid && !("job" in bidding.spec), JSON.stringify(bidding));
  assert.deepEqual(check(bidding, command.params, command.params), [], JSON.stringify(bidding));
  // The checker sees a bid the bridge refuses: one without its budget.
  await create.execute("call-no-budget", { ...base, ...bid, budget: undefined });
  const errors = check(calls.at(-1)!.params, command.params, command.params);
  assert.notDeepEqual(errors, []);
});

/** The schemas `schema` may stand for: itself, or each choice of its $ref, anyOf, oneOf, allOf. */
function alternatives(schema: JsonSchema | boolean | undefined, root: JsonSchema): JsonSchema[] {
  if (schema === undefined || typeof schema === "boolean") return [];
  if (schema.$ref) {
    const name = String(schema.$ref).replace(/^#\/(\$defs|definitions)\//, "");
    return alternatives((root.$defs ?? root.definitions ?? {})[name], root);
  }
  const choices = [...(schema.anyOf ?? []), ...(schema.oneOf ?? []), ...(schema.allOf ?? [])];
  return choices.length ? choices.flatMap((s) => alternatives(s, root)) : [schema];
}

/** Whether a schema has the dot-separated `path` of bridge-fields.json ([] steps into arrays). */
function hasField(schema: JsonSchema | boolean | undefined, steps: string[], root: JsonSchema): boolean {
  if (steps.length === 0) return true;
  const [step, ...rest] = steps;
  const array = step.endsWith("[]");
  const key = array ? step.slice(0, -2) : step;
  return alternatives(schema, root).some((s) => {
    const field = s.properties?.[key];
    if (field === undefined || typeof field === "boolean") return false;
    if (!array) return hasField(field, rest, root);
    return alternatives(field, root).some((a) => a.items !== undefined && hasField(a.items, rest, root));
  });
}

test("every field the plugin reads is in its bridge command's answer schema", () => {
  const read = Object.entries(readFields).filter(([command]) => command !== "description");
  assert.ok(read.some(([command]) => command === "job.logs") && read.some(([command]) => command === "cron.status"));
  assert.ok(read.some(([command]) => command === "autoscale.status"));
  for (const [command, paths] of read) {
    const answer = commandOf("bridge", command).answer;
    assert.ok(answer, `${command} has an answer schema`);
    for (const path of paths) assert.ok(hasField(answer, path.split("."), answer), `${command}'s answer has no ${path}`);
  }
  // The check sees a field that is not there.
  const status = commandOf("bridge", "job.status").answer!;
  assert.ok(!hasField(status, ["run", "attempts[]", "exit"], status));
  assert.ok(!hasField(status, ["name[]"], status));
});

test("the checker refuses what the nodes refuse", () => {
  const bid = commandOf("bridge", "market.bid");
  const errors = check({ models: ["H100"], gpus: "two", hours: 1, max_price: "1", typo: 1 }, bid.params, bid.params);
  assert.ok(errors.some((e) => e.includes("params.gpus")), errors.join("\n"));
  assert.ok(errors.some((e) => e.includes("params.typo: unknown field")), errors.join("\n"));
});

test("a tool call's id is the idempotency key of its bridge call", async () => {
  const { calls, bridge } = recordingBridge();
  const deploy = fleetTools(bridge).find((t) => t.name === "claw_deploy")!;
  await deploy.execute("toolu_01", { image: "busybox" });
  await deploy.execute("toolu_01", { image: "busybox" });
  assert.equal(calls[0].idempotencyKey, "claw-toolu_01");
  assert.equal(calls[1].idempotencyKey, calls[0].idempotencyKey);
  const long = idempotencyKey("x".repeat(500));
  assert.ok(long.length <= 128 && long === idempotencyKey("x".repeat(500)), long);
});
