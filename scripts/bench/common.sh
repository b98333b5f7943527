# Shared by the benchmark scripts: a release broker on fixed local ports in a temp dir,
# stopped (and its data removed) on exit. Source it; set FJORD_BIN to use other binaries.
set -euo pipefail
BIN=${FJORD_BIN:-target/release}
GRPC=${FJORD_BENCH_GRPC:-127.0.0.1:29192}
KAFKA=${FJORD_BENCH_KAFKA:-127.0.0.1:29092}
HTTP=${FJORD_BENCH_HTTP:-127.0.0.1:29644}
DIR=$(mktemp -d "${FJORD_BENCH_DIR:-${TMPDIR:-/tmp}}/fjord-bench.XXXXXX")
export FJORD_BROKERS=$GRPC
CHILDREN=()
BROKER=

cleanup() {
    for pid in "${CHILDREN[@]}" $BROKER; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

# start_broker [extra flags...]: starts the broker on $DIR/data, waits for /health.
start_broker() {
    "$BIN/fjord-broker" --data-dir "$DIR/data" --grpc-addr "$GRPC" --http-addr "$HTTP" \
        --kafka-addr "$KAFKA" \
        "$@" 2>>"$DIR/broker.log" &
    BROKER=$!
    until curl -sf "http://$HTTP/health" >/dev/null; do
        kill -0 "$BROKER" 2>/dev/null || { cat "$DIR/broker.log"; exit 1; }
        sleep 0.05
    done
}

# The broker's resident set size in MiB.
rss_mib() {
    awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$BROKER/status"
}

# metric NAME_REGEX: the sum of the matching /metrics series.
metric() {
    curl -sf "http://$HTTP/metrics" | awk -v re="$1" '$1 ~ re { s += $2 } END { printf "%.0f", s }'
}

# cpu_mark: remembers the machine's CPU counters; cpu_since_mark then prints the share of
# the time since that the hypervisor took (steal) and the share left idle. On a VM whose
# host is busy, steal explains a slow run: compare runs with similar steal only.
cpu_mark() {
    CPU_MARK=$(head -1 /proc/stat)
}
cpu_since_mark() {
    local now
    now=$(head -1 /proc/stat)
    printf '%s\n%s\n' "$CPU_MARK" "$now" | awk '
        NR == 1 { for (i = 2; i <= 9; i++) a[i] = $i }
        NR == 2 { t = 0; for (i = 2; i <= 9; i++) { d[i] = $i - a[i]; t += d[i] }
                  printf "steal %.0f%% idle %.0f%%", 100 * d[9] / t, 100 * d[5] / t }'
}
