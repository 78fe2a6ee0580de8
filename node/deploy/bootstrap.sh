#!/usr/bin/env bash
# Installs clawnode on a GPU machine and runs it as a systemd service: the binary, a `clawnode`
# system user, the data directory (identity, wallet, config.toml with the gateway, bootstrap
# peers, operators and metrics), the gateway token (0600, never printed) and the unit. Safe to
# re-run: the identity and wallet are kept, settings are set rather than appended, and the service
# is restarted only when the binary, the unit or the settings changed.
#
#   bootstrap.sh --binary ./clawnode --gateway ws://10.0.0.2:18789 --token-file token \
#       --bootstrap /ip4/10.0.0.3/tcp/7946/p2p/12D3KooW... --operator 12D3KooW...
#
# Environment (the seed's names) works too: GATEWAY, TOKEN, BOOTSTRAP_PEERS (space-separated),
# NODE_NAME. Run as root. With --root DIR everything is installed under DIR instead of /, owned
# by the caller, and systemd is left alone (for image builds and tests).
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: bootstrap.sh [options]
  --binary PATH          clawnode binary to install
  --binary-url URL       download the binary instead (https; check it with --sha256)
  --sha256 HEX           expected SHA-256 of the binary
  --gateway URL          OpenClaw gateway to connect to as a node ($GATEWAY)
  --token-file PATH      file holding the gateway token ($TOKEN is read too; never printed)
  --bootstrap MULTIADDR  peer to join through, .../p2p/<peer id> (repeatable; $BOOTSTRAP_PEERS)
  --operator PEER_ID     peer given the operate role, e.g. the bridge's (repeatable)
  --name NAME            the node's name in the fleet ($NODE_NAME; default: the host name)
  --network NAME         network to join on first install (default: localnet)
  --listen MULTIADDR     mesh address to listen on (repeatable; default 0.0.0.0:7946 TCP+QUIC)
  --metrics ADDR         Prometheus metrics on this loopback address (default 127.0.0.1:9464)
  --root DIR             install under DIR instead of /; implies --no-systemd
  --no-systemd           install the unit but do not enable or start it
USAGE
}

say() { printf '  %s\n' "$*"; }
fail() {
    printf 'bootstrap: %s\n' "$*" >&2
    exit 1
}

# Installs $1 at $2 with mode $3 unless $2 already holds the same bytes; says which ($4 names it).
put() {
    local src=$1 dest=$2 mode=$3 what=$4
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        say "$what unchanged: $dest"
    else
        install -m "$mode" "$src" "$dest.new"
        mv -f "$dest.new" "$dest"
        changed=1
        say "installed the $what: $dest"
    fi
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
binary=""
binary_url=""
sha256=""
gateway="${GATEWAY:-}"
token_file=""
name="${NODE_NAME:-}"
network="localnet"
metrics="127.0.0.1:9464"
root=""
systemd=1
bootstrap=()
operators=()
listen=()
for peer in ${BOOTSTRAP_PEERS:-}; do bootstrap+=("$peer"); done

while [ $# -gt 0 ]; do
    case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --binary-url) binary_url=${2:?--binary-url needs a URL}; shift 2 ;;
    --sha256) sha256=${2:?--sha256 needs a digest}; shift 2 ;;
    --gateway) gateway=${2:?--gateway needs a URL}; shift 2 ;;
    --token-file) token_file=${2:?--token-file needs a path}; shift 2 ;;
    --bootstrap) bootstrap+=("${2:?--bootstrap needs a multiaddr}"); shift 2 ;;
    --operator) operators+=("${2:?--operator needs a peer id}"); shift 2 ;;
    --name) name=${2:?--name needs a name}; shift 2 ;;
    --network) network=${2:?--network needs a name}; shift 2 ;;
    --listen) listen+=("${2:?--listen needs a multiaddr}"); shift 2 ;;
    --metrics) metrics=${2:?--metrics needs an address}; shift 2 ;;
    --root) root=${2:?--root needs a directory}; systemd=0; shift 2 ;;
    --no-systemd) systemd=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; fail "unknown option $1" ;;
    esac
done

[ -n "$root" ] || [ "$(id -u)" = 0 ] || fail "run as root (or install under a directory with --root)"
[ -n "$name" ] || name=$(hostname)

bin_dir="$root/usr/local/bin"
data_dir="$root/var/lib/clawnode"
etc_dir="$root/etc/clawnode"
unit_dir="$root/etc/systemd/system"
installed="$bin_dir/clawnode"
changed=0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. The binary.
if [ -n "$binary_url" ]; then
    say "downloading $binary_url"
    curl -fsSL --proto '=https,http' --max-time 300 "$binary_url" -o "$work/clawnode" ||
        fail "cannot download $binary_url"
    binary="$work/clawnode"
fi
if [ -z "$binary" ]; then
    if [ -x "$here/clawnode" ]; then
        binary="$here/clawnode"
    elif command -v clawnode >/dev/null; then
        binary=$(command -v clawnode)
    else
        fail "no binary: pass --binary PATH or --binary-url URL"
    fi
fi
[ -f "$binary" ] || fail "$binary is not a file"
if [ -n "$sha256" ]; then
    echo "$sha256  $binary" | sha256sum --check --status || fail "$binary does not match --sha256"
fi
"$binary" --version >/dev/null 2>&1 || fail "$binary does not run here"
mkdir -p "$bin_dir"
put "$binary" "$installed" 0755 binary

# 2. The service user (system installs only).
owner="$(id -un)"
if [ -z "$root" ]; then
    owner=clawnode
    if ! id clawnode >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/clawnode --no-create-home \
            --shell /usr/sbin/nologin clawnode
        say "created the clawnode system user"
    fi
    if getent group docker >/dev/null && ! id -nG clawnode | tr ' ' '\n' | grep -qx docker; then
        usermod -aG docker clawnode
        say "added clawnode to the docker group"
    fi
fi

# 3. Identity and wallet, once.
node() { "$installed" --data-dir "$data_dir" "$@"; }
if [ -f "$data_dir/identity.key" ]; then
    say "keeping the node identity in $data_dir"
else
    node init --network "$network" >/dev/null
    changed=1
    say "created the node identity and wallet in $data_dir"
fi

# 4. The gateway token: from --token-file or $TOKEN, stored 0600 for the service user.
token_dest=""
if [ -n "$token_file" ] || [ -n "${TOKEN:-}" ]; then
    mkdir -p "$etc_dir"
    chmod 0755 "$etc_dir"
    token_dest="$etc_dir/gateway.token"
    (
        umask 077
        if [ -n "$token_file" ]; then
            [ -r "$token_file" ] || fail "cannot read $token_file"
            tr -d '\r\n' <"$token_file" >"$work/token"
        else
            printf '%s' "$TOKEN" >"$work/token"
        fi
    )
    [ -s "$work/token" ] || fail "the gateway token is empty"
    put "$work/token" "$token_dest" 0600 "gateway token"
fi
[ -z "$gateway" ] || [ -n "$token_dest" ] || [ -f "$etc_dir/gateway.token" ] ||
    fail "--gateway needs the gateway's token: --token-file PATH or \$TOKEN"
[ -n "$token_dest" ] || [ ! -f "$etc_dir/gateway.token" ] || token_dest="$etc_dir/gateway.token"

# 5. Settings, set (not appended) through clawnode itself, so the file stays valid TOML.
settings=(configure --name "$name" --metrics "$metrics")
[ -z "$gateway" ] || settings+=(--gateway "$gateway")
[ -z "$token_dest" ] || settings+=(--gateway-token-file "$token_dest")
for peer in "${bootstrap[@]}"; do settings+=(--bootstrap "$peer"); done
for peer in "${operators[@]}"; do settings+=(--operator "$peer"); done
for address in "${listen[@]}"; do settings+=(--listen "$address"); done
before=$(cat "$data_dir/config.toml" 2>/dev/null || true)
node "${settings[@]}" >/dev/null
if [ "$before" = "$(cat "$data_dir/config.toml")" ]; then
    say "settings unchanged: $data_dir/config.toml"
else
    changed=1
    say "wrote the settings to $data_dir/config.toml"
fi
if [ -z "$root" ]; then
    chown -R clawnode:clawnode "$data_dir"
    [ -z "$token_dest" ] || chown clawnode:clawnode "$token_dest"
fi

# 6. The unit.
mkdir -p "$unit_dir"
put "$here/clawnode.service" "$unit_dir/clawnode.service" 0644 unit

peer=$(node --json identity | sed -n 's/.*"peer_id": *"\([^"]*\)".*/\1/p' | head -n 1)
if [ "$systemd" = 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --quiet clawnode
    if [ "$changed" = 1 ]; then
        systemctl restart clawnode
        say "clawnode (re)started"
    else
        systemctl start clawnode
        say "clawnode running (nothing changed)"
    fi
    say "logs: journalctl -u clawnode -f"
elif [ "$systemd" = 1 ]; then
    say "systemd is not running here: start the node with"
    say "  sudo -u $owner $installed --data-dir $data_dir run"
else
    say "systemd left alone; start the node with: $installed --data-dir $data_dir run"
fi
say "node $name ($("$installed" --version)): peer $peer, owner $owner"
say "metrics: http://$metrics/metrics"
[ -z "$gateway" ] || say "approve it on the gateway: openclaw nodes pending, then openclaw nodes approve <request>"
echo "clawnode installed"
