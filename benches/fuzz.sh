#!/usr/bin/env bash
# The long run of the decoder fuzz target (src/protocol/fuzz.rs): control frames,
# data-stream header frames and UDP datagram frames, structured hostile inputs from
# proptest. `cargo test` runs the same target for a few thousand cases per decoder;
# this runs it for up to CASES cases or SECS seconds per decoder, whichever comes first.
#
#   bash benches/fuzz.sh [CASES] [SECS]      # defaults: 10,000,000 cases, 600 s
#
# A failure prints the smallest input proptest shrank it to, and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIPE_FUZZ_CASES="${1:-10000000}"
export PIPE_FUZZ_SECS="${2:-600}"
# --test-threads 1: the three decoders one after another, each with the whole machine.
exec cargo test --lib protocol::fuzz -- --nocapture --test-threads 1
