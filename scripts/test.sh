#!/usr/bin/env bash
# Everything the tests need, then every check and test: the README's test command, and
# what CI runs (`.ci/run` calls exactly this). Run from anywhere: `bash scripts/test.sh`.
#
# 1. installs the Debian packages the tests drive, when missing (apt-get; as root, or
#    through sudo): caddy (a real Caddy for http forwards), chromium (headless, for the
#    dashboard and inspector pages) and chromium-driver (WebDriver, to click through
#    the inspector page), curl and openssl (HTTP and TLS clients, and the
#    certificates people make), nginx (a real PROXY-protocol reader), redis-server
#    (the cluster directory) and redis-sentinel (a highly available one), and nodejs
#    and npm when `node` is missing;
# 1b. `npm ci` in tests/oidc: the pinned `oidc-provider` (package-lock.json) the
#    sign-in tests run as their OpenID Provider;
# 2. formatting, clippy with warnings denied, rustdoc with warnings denied;
# 3. `cargo deny check licenses bans sources` (installs cargo-deny when missing);
# 4. `cargo test`: every unit, integration and doc test, the decoder fuzz target too.
#
# With those packages installed already, plain `cargo test` runs the same tests.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "== $*" >&2; }

# The newest cargo-deny that builds on the toolchain here (it needs Rust 1.88).
CARGO_DENY_VERSION=0.20.2

packages=(caddy chromium chromium-driver curl openssl nginx redis-server redis-sentinel)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node may come from elsewhere than Debian (nodesource, nvm): only its absence counts.
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
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

say "npm ci (tests/oidc: the OpenID Provider of the sign-in tests)"
(cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)

say "cargo fmt --check"
cargo fmt --all --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

say "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps

# cargo-deny, built from crates.io once per machine (a few minutes of CPU): the
# licences, bans and sources in deny.toml. Not `advisories`: its database is fetched
# from GitHub, which this environment cannot reach.
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
    say "cargo install cargo-deny $CARGO_DENY_VERSION"
    cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi
say "cargo deny check licenses bans sources"
cargo deny --locked check --hide-inclusion-graph licenses bans sources

say "cargo test"
cargo test --no-fail-fast
