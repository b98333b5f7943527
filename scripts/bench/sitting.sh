#!/usr/bin/env bash
# One sitting of docs/BENCHMARKS.md: `fjord perf disk`, then ROUNDS (default 3) rounds of
# W1, W1cache, W2, W5 and W5all taking turns, then W3 and W4 twice each; every run on a fresh
# broker. W6 (scripts/bench/w6.sh) and the restart (restart.sh) run apart. From the
# repository root, after `cargo build --release -p fjord-broker -p fjord-tools` and
# `cargo build --release --example kafka_perf_produce`; FJORD_BIN names another build.
set -euo pipefail
source "$(dirname "$0")/workload.sh"
bin=${FJORD_BIN:-target/release}
rounds=${ROUNDS:-3}
disk=$(mktemp -d "${FJORD_BENCH_DIR:-${TMPDIR:-/tmp}}/perfdisk.XXXXXX")
"$bin/fjord" perf disk --dir "$disk" | sed "s/^/disk /"
rm -rf "$disk"
for _ in $(seq "$rounds"); do
    for workload in W1 W1cache W2 W5 W5all; do
        run_workload sitting "$bin" "$workload"
    done
done
for workload in W3 W3 W4 W4; do
    run_workload sitting "$bin" "$workload"
done
