#!/usr/bin/env bash
# Workloads of docs/BENCHMARKS.md against two builds, alternately, each run on a fresh
# broker: an A/B of a change on this noisy VM. Usage, from the repository root:
#   [WORKLOADS="W1 W5"] scripts/bench/ab.sh BEFORE_DIR AFTER_DIR [ROUNDS]
# WORKLOADS may name W1, W2, W4 and W5 (W1 and W5 by default).
# where each DIR holds fjord-broker, fjord and examples/kafka_perf_produce (a
# `target/release` of `cargo build --release -p fjord-broker -p fjord-tools --example
# kafka_perf_produce`; copy the "before" one aside first).
set -euo pipefail
before=$1 after=$2 rounds=${3:-3}
run() { # label bindir workload
    local label=$1 bindir=$2 workload=$3
    (
        export FJORD_BIN=$bindir
        source "$(dirname "$0")/common.sh"
        start_broker
        # The client's CPU seconds (user + sys) and the machine's steal come with each
        # figure: CPU per run moves less than throughput when the host is busy.
        local cpu=$DIR/client-cpu
        cpu_mark
        case $workload in
        W1 | W2)
            local acks=1
            [ "$workload" = W2 ] && acks=all
            "$BIN/fjord" topic create perf --partitions 1 >/dev/null
            /usr/bin/time -f "%U %S" -o "$cpu" "$BIN/fjord" perf produce --topic perf \
                --num-records 500000 --record-size 1024 --acks "$acks" --json |
                sed "s/^/$label $workload /"
            ;;
        W4)
            /usr/bin/time -f "%U %S" -o "$cpu" "$BIN/fjord" perf e2e --topic e2e \
                --rate 51200 --duration 10 --acks all --record-size 1024 --json |
                sed "s/^/$label W4 /"
            ;;
        *)
            "$BIN/fjord" topic create k1 --partitions 1 >/dev/null
            /usr/bin/time -f "%U %S" -o "$cpu" "$BIN/examples/kafka_perf_produce" \
                --bootstrap "$KAFKA" --topic k1 --num-records 500000 --record-size 1024 \
                --acks 1 | tail -1 | sed "s/^/$label W5 /"
            ;;
        esac
        echo "$label $workload client cpu $(awk '{ print $1 + $2 }' "$cpu") s," \
            "broker cpu $(awk '{ print ($14 + $15) / 100 }' "/proc/$BROKER/stat") s," \
            "$(cpu_since_mark)"
    )
}
# Which build goes first alternates from round to round: a run is slowed by the writeback
# of the one before it, so a fixed order would favour one side.
for round in $(seq "$rounds"); do
    for workload in ${WORKLOADS:-W1 W5}; do
        if [ $((round % 2)) -eq 1 ]; then
            run before "$before" "$workload"
            run after "$after" "$workload"
        else
            run after "$after" "$workload"
            run before "$before" "$workload"
        fi
    done
done
