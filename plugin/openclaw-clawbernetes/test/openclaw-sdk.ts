// The plugin's entry under plain `node --test`. src/index.ts imports the host's SDK
// (`openclaw/plugin-sdk/plugin-entry`); in the gateway that resolves to the gateway's own package,
// which its loader links in as node_modules/openclaw beside its copy of the plugin's source. Here
// nothing is linked, so a resolve hook does the same: `openclaw` and `openclaw/...` resolve as the installed OpenClaw
// package resolves its own name, through its package.json exports, to the very files the gateway
// would load. The package is the one scripts/test.sh installs and names in CLAW_OPENCLAW (its
// openclaw.mjs); without it the entry's tests skip, or fail under CLAW_TEST_STRICT=1 as the
// project's other tests that need an installed tool do.

import { existsSync } from "node:fs";
import { registerHooks } from "node:module";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

/** The installed OpenClaw package's root, or why there is none. */
export function openclawPackage(): { root: string } | { missing: string } {
  const entry = process.env.CLAW_OPENCLAW;
  if (!entry) return { missing: "CLAW_OPENCLAW is not set (scripts/test.sh sets it)" };
  const root = dirname(entry);
  if (!existsSync(join(root, "package.json"))) return { missing: `no OpenClaw package at ${root}` };
  return { root };
}

let hooked: string | undefined;

/**
 * src/index.ts's default export, loaded with `openclaw/*` resolved from the installed package;
 * undefined (with the reason) when there is none.
 */
export async function loadEntry(): Promise<{ entry: typeof import("../src/index.ts").default } | { missing: string }> {
  const found = openclawPackage();
  if ("missing" in found) return found;
  if (hooked === undefined) {
    hooked = pathToFileURL(join(found.root, "package.json")).href;
    const parentURL = hooked;
    registerHooks({
      resolve(specifier, context, nextResolve) {
        if (specifier === "openclaw" || specifier.startsWith("openclaw/")) {
          return nextResolve(specifier, { ...context, parentURL });
        }
        return nextResolve(specifier, context);
      },
    });
  }
  const module = await import("../src/index.ts");
  return { entry: module.default };
}
