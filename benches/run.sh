#!/usr/bin/env bash
# The benchmark harness (issue 5): one command from a fresh clone.
#
#   bash benches/run.sh [pipebench run options]
#
# 1. installs what is missing: socat, iperf3 and redis-server (apt-get), rathole 0.5.0
#    and bore-cli 0.6.0 (cargo install into benches/.cache, which git ignores);
# 2. builds piped/pipec (release) and the harness/load generator (benches/pipebench);
# 3. raises the open-file limit, enters a network namespace of its own (bore's control
#    port is fixed at 7835; the namespace also keeps the run away from anything else on
#    the machine's loopback) and runs every workload over every system in one run;
# 4. writes docs/BENCHMARKS.md (and the raw run to benches/.cache/last-run.json).
#
# Workloads (all by default): tcp, udp, echo, mem (memory given back after a bulk load,
# then 1,000/10,000 idle connections on the same processes), stall (200 stalled visitors
# beside a sibling tunnel), inspect (pipe's HTTP inspector vs a plain forward), cluster
# (three piped nodes on 127.0.0.2-4 sharing a redis-server the harness starts: bulk
# throughput and 1-byte RTT through the holding node and through a peer node, then 1,000
# idle visitors over the three nodes and each node's RSS). `--workloads cluster --only
# pipe` measures the cluster alone and replaces only its section of docs/BENCHMARKS.md.
# Not in the default set: wan (pipe, rathole, bore and direct across an emulated link of
# 0/20/50/100 ms and 50 ms + 1% loss at 1 Gbit/s: two more namespaces joined by the
# harness's own link emulator; ~20 minutes). `--workloads wan` replaces only its "Real
# links" section; `--links 50ms,100ms` narrows it, `--wan-rounds N` sets its rounds (3).
# Not in the default set either: signin (a 256 MiB download through an http forward
# behind OpenID Connect sign-in against the same through a plain one, through a real
# Caddy and a real `oidc-provider`; needs caddy, node and npm, installed here when asked
# for). `--workloads signin --only pipe` replaces only its "Sign-in" section.
# Options go to `pipebench run`, e.g. `--rounds 3`, `--workloads tcp,echo`,
# `--only pipe,rathole`, `--out-md /tmp/x.md`, `--variant LABEL=DIR` (A/B another build
# of piped/pipec). CARGO_TARGET_DIR is honoured. Takes ~20 minutes of measuring on a
# 2-core machine, plus the builds the first time. After an edit of benches/TUNING.md
# alone, `cargo bench --bench pipebench -- tuning --out-md docs/BENCHMARKS.md` puts it
# into the file's Tuning section again without measuring anything.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE="$ROOT/benches/.cache"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir -p "$CACHE"

say() { echo "run.sh: $*" >&2; }

# --- 1. tools -----------------------------------------------------------------------
missing=()
for t in socat iperf3 redis-server; do command -v "$t" >/dev/null || missing+=("$t"); done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
fi

# The signin workload's Caddy and OpenID Provider (tests/oidc, pinned by its lock file).
if [[ " $* " == *signin* ]]; then
    need=()
    command -v caddy >/dev/null || need+=(caddy)
    command -v curl >/dev/null || need+=(curl)
    command -v node >/dev/null && command -v npm >/dev/null || need+=(nodejs npm)
    if ((${#need[@]})); then
        say "installing ${need[*]} (the signin workload)"
        sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
    fi
    (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
fi

install_peer() { # crate version binary
    local crate=$1 version=$2 bin=$3
    if [ -x "$CACHE/bin/$bin" ] && "$CACHE/bin/$bin" --version 2>/dev/null | grep -q "$version"; then
        return
    fi
    say "cargo install $crate $version (once; cached in benches/.cache)"
    # --locked first (the exact dependencies the release shipped with); rathole 0.5.0's
    # lock file pins a `time` crate that newer rustc refuses, so fall back to a fresh
    # resolution within its semver ranges.
    cargo install --quiet --locked "$crate" --version "$version" --root "$CACHE" ||
        cargo install --quiet "$crate" --version "$version" --root "$CACHE" ||
        say "could not install $crate: its rows will say 'not available'"
}
install_peer rathole 0.5.0 rathole
install_peer bore-cli 0.6.0 bore

# --- 2. build -----------------------------------------------------------------------
say "building release binaries into $TARGET"
cargo build --release --bins
BENCH=$(cargo bench --bench pipebench --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*pipebench[^"]*"' | tail -1 | cut -d'"' -f4)
[ -x "$BENCH" ] || { say "could not find the pipebench binary"; exit 1; }

# --- 3. limits and namespace ----------------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 20000 ]; then
    say "warning: open-file limit is $(ulimit -n); the 10,000-connection rows need ~20,000"
fi

ARGS=(run --root "$ROOT" --bin-dir "$TARGET/release" --cache "$CACHE"
    --out-md "$ROOT/docs/BENCHMARKS.md" --out-json "$CACHE/last-run.json"
    --command "bash benches/run.sh${*:+ $*}" "$@")

# net.ipv4.tcp_mem is not visible inside a network namespace on every kernel; the
# stall workload reports the host's pressure threshold beside the kernel's TCP memory.
PIPEBENCH_TCP_MEM=$(cat /proc/sys/net/ipv4/tcp_mem 2>/dev/null || true)
export PIPEBENCH_TCP_MEM

NS="pipebench-$$"
# The wan workload's two namespaces (`-a`, the server side; `-b`, the client side),
# joined only by the link emulator the harness starts.
WAN_NS="pipe-wan-$$"
# Ends whatever still runs in this run's namespaces (after Ctrl-C the load and the
# systems live on: each runs in a process group of its own) and deletes them.
cleanup() {
    for ns in "$NS" "$WAN_NS-a" "$WAN_NS-b"; do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
}
if [ "$(id -u)" = 0 ] && ip netns add "$NS" 2>/dev/null; then
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # lo up gives the namespace all of 127.0.0.0/8 (the cluster's nodes use .2 to .4).
    ip netns exec "$NS" ip link set lo up
    if ip netns add "$WAN_NS-a" && ip netns add "$WAN_NS-b"; then
        ARGS+=(--wan-ns "$WAN_NS")
    else
        say "could not create the wan namespaces: the wan workload will say why it has no numbers"
    fi
    say "measuring inside network namespace $NS"
    ip netns exec "$NS" "$BENCH" "${ARGS[@]}"
else
    say "no network namespace (needs root): measuring on the host loopback; bore needs port 7835 free"
    "$BENCH" "${ARGS[@]}"
fi
