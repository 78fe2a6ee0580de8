// openclaw-clawbernetes: the GPU fleet and the MOLT market as agent tools. Every tool is one call
// to the Clawbernetes bridge node through the gateway (`api.runtime.nodes.invoke`), never one per
// node. A background service watches fleet health, and the `clawbernetes.fleet-status` gateway
// method returns its latest snapshot and recent transitions. The Control UI gains a Fleet tab: the
// fleet console, streamed from the bridge (console.ts).
//
// `openclaw/plugin-sdk/plugin-entry` is the running gateway's own SDK, never a copy, and this
// linked source plugin needs no node_modules: the gateway loads a captured copy of the plugin's
// source beside a node_modules/openclaw link to its own package (its Jiti fallback aliases
// `openclaw/plugin-sdk/*` to the same dist/plugin-sdk files). The unit tests resolve it the same
// way, from the installed OpenClaw that scripts/test.sh names (test/openclaw-sdk.ts).

import { definePluginEntry } from "openclaw/plugin-sdk/plugin-entry";

import { Bridge, BRIDGE_COMMANDS, resolveConfig } from "./bridge.ts";
import { CONSOLE_PATH, CONSOLE_ROUTE, ConsoleTab, TAB_LOGS_PATH } from "./console.ts";
import { HealthMonitor } from "./monitor.ts";
import { fleetTools } from "./tools.ts";

// The plugin's config schema is the manifest's (openclaw.plugin.json): the gateway validates
// `plugins.entries.clawbernetes.config` against it and hands the result in as `api.pluginConfig`.
export default definePluginEntry({
  id: "clawbernetes",
  name: "Clawbernetes",
  description: "GPU fleet and MOLT market tools through the Clawbernetes gateway bridge",
  register(api) {
    const config = resolveConfig(api.pluginConfig);
    const bridge = new Bridge(api.runtime.nodes, config);
    for (const tool of fleetTools(bridge)) {
      api.registerTool(tool);
    }
    const monitor = new HealthMonitor(bridge, config, api.logger);
    api.registerService({
      id: "clawbernetes-health",
      start: () => monitor.start(),
      stop: () => monitor.stop(),
    });
    api.registerGatewayMethod(
      "clawbernetes.fleet-status",
      async ({ respond }) => respond(true, monitor.status()),
      { scope: "operator.read" },
    );
    // The Fleet tab of the Control UI: the console of the whole fleet, from the bridge.
    const tab = new ConsoleTab(bridge);
    api.registerService({
      id: "clawbernetes-console",
      start: () => tab.start(),
      stop: () => tab.stop(),
    });
    api.registerHttpRoute({
      path: CONSOLE_ROUTE,
      auth: "gateway",
      match: "prefix",
      handler: (req, res) => tab.handle(req, res),
    });
    // The tab's page asks for a workload's output here, proving itself with its tab's capability
    // (its sandboxed frame cannot send the gateway's cookie grant with such a request).
    api.registerHttpRoute({
      path: TAB_LOGS_PATH,
      auth: "plugin",
      match: "exact",
      handler: (req, res) => tab.handleLogs(req, res),
    });
    api.session.controls.registerControlUiDescriptor({
      surface: "tab",
      id: "fleet",
      label: "Fleet",
      description: "The Clawbernetes fleet: nodes, GPUs, workloads, market and prices, live",
      icon: "server",
      group: "control",
      path: CONSOLE_PATH,
      requiredScopes: ["operator.read"],
    });
    // Lets the gateway forward the bridge's commands without hand-editing its allowlist.
    // Older gateways lack this: list the commands under gateway.nodes.commands.allow instead.
    if (typeof api.registerNodeInvokePolicy === "function") {
      api.registerNodeInvokePolicy({
        commands: [...BRIDGE_COMMANDS],
        defaultPlatforms: ["linux"],
        handle: (ctx) => ctx.invokeNode(),
      });
    }
  },
});
