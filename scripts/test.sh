#!/usr/bin/env bash
# Everything the tests need, then every check and test: the README's test command, and
# what CI runs (`.ci/run` calls exactly this). Run from anywhere: `bash scripts/test.sh`.
#
# 1. installs the Debian packages the tests drive, when missing (apt-get; as root, or
#    through sudo): caddy (a real Caddy for http forwards), chromium (headless, for the
#    dashboard and inspector pages), curl and openssl (HTTP and TLS clients, and the
#    certificates people make), nginx (a real PROXY-protocol reader) and redis-server
#    (the cluster directory);
# 2. formatting, clippy with warnings denied, rustdoc with warnings denied;
# 3. `cargo test`: every unit, integration and doc test.
#
# With those packages installed already, plain `cargo test` runs the same tests.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "== $*" >&2; }

packages=(caddy chromium curl openssl nginx redis-server)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    say "apt-get install ${missing[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
# Debian's caddy, nginx and redis-server packages may start system services on their
# default ports; the tests start their own instances on ephemeral loopback ports and
# need nothing from those.

say "cargo fmt --check"
cargo fmt --all --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

say "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps

say "cargo test"
cargo test
