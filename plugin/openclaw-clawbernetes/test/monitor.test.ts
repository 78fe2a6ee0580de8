// The health service's schedule against a bridge slower than the poll interval: polls never
// overlap (at most one bridge call in flight, ever), polling goes on, and stopping ends it: the
// poll under way finishes before stop resolves and none starts after.

import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";

import { Bridge, BRIDGE_COMMANDS, resolveConfig, type NodesRuntime } from "../src/bridge.ts";
import { HealthMonitor } from "../src/monitor.ts";

/** A bridge whose every call takes `ms`; `seen` counts calls, polls and calls in flight at once. */
function slowBridge(ms: number) {
  const seen = { calls: 0, polls: 0, inFlight: 0, most: 0 };
  const runtime: NodesRuntime = {
    async list() {
      return { nodes: [{ nodeId: "bridge-1", commands: [...BRIDGE_COMMANDS], connected: true }] };
    },
    async invoke(request) {
      seen.calls++;
      if (request.command === "fleet.health") seen.polls++;
      seen.inFlight++;
      seen.most = Math.max(seen.most, seen.inFlight);
      try {
        await sleep(ms);
        const payload = request.command === "fleet.health" ? { summary: {}, nodes: [] } : { leases: [] };
        return { ok: true, payload };
      } finally {
        seen.inFlight--;
      }
    },
  };
  return { seen, runtime };
}

/** A monitor polling `runtime` every `healthIntervalMs`, stopped when the test ends however it ends. */
function monitor(t: TestContext, runtime: NodesRuntime, healthIntervalMs: number): HealthMonitor {
  const config = resolveConfig({ healthIntervalMs });
  const health = new HealthMonitor(new Bridge(runtime, config), config, { info() {}, warn() {} });
  t.after(() => health.stop());
  return health;
}

async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await sleep(2);
  }
}

test("a poll slower than the interval never overlaps the next, and stop ends the polling", async (t) => {
  // Each poll is two calls of 40 ms (fleet.health, then market.leases) against a 5 ms interval.
  const { seen, runtime } = slowBridge(40);
  const health = monitor(t, runtime, 5);
  health.start();
  health.start(); // a second start while running starts nothing more
  await until(() => seen.polls >= 4, "four polls");
  await health.stop();
  assert.equal(seen.most, 1, "bridge calls in flight at once");
  assert.equal(seen.inFlight, 0, "stop resolves once the poll under way has finished");
  assert.equal(health.status().lastError, null);
  const calls = seen.calls;
  await sleep(200);
  assert.equal(seen.calls, calls, "no call after stop");
});

test("stopping mid-poll lets that poll finish and schedules nothing after it", async (t) => {
  const { seen, runtime } = slowBridge(60);
  const health = monitor(t, runtime, 5);
  health.start();
  await until(() => seen.inFlight === 1, "the first call");
  const stopping = health.stop();
  assert.equal(seen.inFlight, 1, "the call under way is not cut off");
  await stopping;
  assert.equal(seen.inFlight, 0);
  assert.equal(seen.polls, 1);
  const calls = seen.calls;
  await sleep(200);
  assert.equal(seen.calls, calls, "no call after stop");
});

test("a restart while the last poll is under way does not start a second one beside it", async (t) => {
  const { seen, runtime } = slowBridge(40);
  const health = monitor(t, runtime, 5);
  health.start();
  await until(() => seen.inFlight === 1, "the first call");
  void health.stop(); // the gateway restarting the service without waiting
  health.start();
  await until(() => seen.polls >= 3, "three polls");
  await health.stop();
  assert.equal(seen.most, 1, "bridge calls in flight at once");
});

test("stopping between polls cancels the next one", async (t) => {
  const { seen, runtime } = slowBridge(1);
  const health = monitor(t, runtime, 300);
  health.start();
  await until(() => seen.calls === 2 && seen.inFlight === 0, "the first poll");
  await health.stop();
  await sleep(700);
  assert.equal(seen.polls, 1, "the poll that was due 300 ms after the first did not run");
});
