#!/usr/bin/env bash
# Workloads of docs/BENCHMARKS.md against two builds, alternately, each run on a fresh
# broker: an A/B of a change on this noisy VM. Usage, from the repository root:
#   [WORKLOADS="W1 W5"] scripts/bench/ab.sh BEFORE_DIR AFTER_DIR [ROUNDS]
# WORKLOADS may name any workload of scripts/bench/workload.sh (W1 and W5 by default).
# Each DIR holds fjord-broker, fjord and examples/kafka_perf_produce: a `target/release`
# after `cargo build --release -p fjord-broker -p fjord-tools` and `cargo build
# --release --example kafka_perf_produce` (copy the "before" one aside first). W5 passes
# `-X` and `--partition`, which kafka_perf_produce has since the thirteenth and the
# twentieth sessions: use a newer one.
set -euo pipefail
before=$1 after=$2 rounds=${3:-3}
source "$(dirname "$0")/workload.sh"
# Which build goes first alternates from round to round: a run is slowed by the writeback
# of the one before it, so a fixed order would favour one side.
for round in $(seq "$rounds"); do
    for workload in ${WORKLOADS:-W1 W5}; do
        if [ $((round % 2)) -eq 1 ]; then
            run_workload before "$before" "$workload"
            run_workload after "$after" "$workload"
        else
            run_workload after "$after" "$workload"
            run_workload before "$before" "$workload"
        fi
    done
done
