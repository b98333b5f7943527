# run_workload LABEL BINDIR WORKLOAD: one run of a docs/BENCHMARKS.md workload on a fresh
# broker (BINDIR holds fjord-broker, fjord and examples/kafka_perf_produce), printed as
# LABEL WORKLOAD {json}, then the client's and the broker's CPU seconds and the machine's
# steal and idle shares over the run. Source it. WORKLOAD is one of:
#   W1, W2     500,000 records of 1 KiB to one partition, acks 1 / all (fjord perf produce)
#   W1cache    W1 on a broker with --log-drop-behind-bytes 0 (Kafka's way: every page
#              written stays in the page cache; the default keeps 128 MiB of it)
#   W3         2 GiB produced, then read from offset 0 (fjord perf consume; in page cache:
#              an untimed read first brings back what drop-behind dropped)
#   W4         fjord perf e2e at 50 MB/s for 10 s, acks all
#   W5, W5all  W1 through the Kafka listener with librdkafka, acks 1 / all (batch.size
#              is librdkafka's default, 1,000,000; sittings 1-6 used Java's 16 KiB;
#              message.copy.max.bytes=0 from the thirteenth session: librdkafka sends
#              each 1 KiB value from the message instead of copying it into the request;
#              --partition 0 from the twentieth: no per-record partitioner)
run_workload() {
    local label=$1 bindir=$2 workload=$3
    (
        export FJORD_BIN=$bindir
        source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
        local flags=()
        [ "$workload" = W1cache ] && flags=(--log-drop-behind-bytes 0)
        start_broker "${flags[@]}"
        local cpu=$DIR/client-cpu
        local perf=("$BIN/fjord" perf)
        case $workload in
        W1 | W1cache | W2)
            local acks=1
            [ "$workload" = W2 ] && acks=all
            "$BIN/fjord" topic create perf --partitions 1 >/dev/null
            cpu_mark
            /usr/bin/time -f "%U %S" -o "$cpu" "${perf[@]}" produce --topic perf \
                --num-records 500000 --record-size 1024 --acks "$acks" --json
            ;;
        W3)
            "$BIN/fjord" topic create replay --partitions 1 >/dev/null
            "${perf[@]}" produce --topic replay --num-records 2097152 --record-size 1024 \
                --acks 1 --json >/dev/null
            "${perf[@]}" consume --topic replay --from-beginning --num-records 2097152 \
                --json | sed 's/^/from-disk /'
            cpu_mark
            /usr/bin/time -f "%U %S" -o "$cpu" "${perf[@]}" consume --topic replay \
                --from-beginning --num-records 2097152 --json
            ;;
        W4)
            cpu_mark
            /usr/bin/time -f "%U %S" -o "$cpu" "${perf[@]}" e2e --topic e2e \
                --rate 51200 --duration 10 --acks all --record-size 1024 --json
            ;;
        W5 | W5all)
            local acks=1
            [ "$workload" = W5all ] && acks=all
            "$BIN/fjord" topic create k1 --partitions 1 >/dev/null
            cpu_mark
            /usr/bin/time -f "%U %S" -o "$cpu" "$BIN/examples/kafka_perf_produce" \
                --bootstrap "$KAFKA" --topic k1 --num-records 500000 --record-size 1024 \
                --acks "$acks" --batch-bytes 1000000 --partition 0 -X message.copy.max.bytes=0 |
                tail -1
            ;;
        *)
            echo "unknown workload $workload" >&2
            exit 2
            ;;
        esac >"$DIR/out"
        sed "s/^/$label $workload /" "$DIR/out"
        echo "$label $workload client cpu $(awk '{ print $1 + $2 }' "$cpu") s," \
            "broker cpu $(awk '{ print ($14 + $15) / 100 }' "/proc/$BROKER/stat") s," \
            "$(cpu_since_mark)"
    )
}
