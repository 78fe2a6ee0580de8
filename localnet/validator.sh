#!/usr/bin/env bash
# Starts a real solana-test-validator on 127.0.0.1 and sets up MOLT on it: the mint (6 decimals)
# and a funded faucet, recorded in DATA_DIR/localnet.json for `clawnode wallet`.
#
#   localnet/validator.sh [DATA_DIR] [RPC_PORT]
#
# The validator comes from CLAW_SOLANA_TEST_VALIDATOR, else PATH, else the build that
# scripts/test.sh unpacks into ~/.cache/clawbernetes/solana. Its ledger lives in a temp dir
# (started with --reset) and is removed when this script stops (Ctrl-C).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data_dir=${1:-${CLAWNODE_DATA_DIR:-$HOME/.clawnode}}
port=${2:-8899}

validator=${CLAW_SOLANA_TEST_VALIDATOR:-$(command -v solana-test-validator || true)}
if [ -z "$validator" ] && [ -x "$HOME/.cache/clawbernetes/solana/solana-test-validator" ]; then
    validator="$HOME/.cache/clawbernetes/solana/solana-test-validator"
fi
[ -n "$validator" ] || { echo "no solana-test-validator: set CLAW_SOLANA_TEST_VALIDATOR or run scripts/test.sh once" >&2; exit 1; }

ledger=$(mktemp -d)
"$validator" --bind-address 127.0.0.1 --rpc-port "$port" --faucet-port $((port + 1)) \
    --gossip-port $((port + 2)) --dynamic-port-range $((port + 3))-$((port + 40)) \
    --ledger "$ledger" --reset --quiet &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$ledger"' EXIT
echo "solana-test-validator (pid $pid) on http://127.0.0.1:$port, ledger $ledger" >&2

cargo run --locked -q -p clawnode -- --data-dir "$data_dir" localnet --use-rpc "http://127.0.0.1:$port"
echo "set chain.rpc_url = \"http://127.0.0.1:$port\" in $data_dir/config.toml; Ctrl-C stops the validator" >&2
wait "$pid"
