#!/usr/bin/env bash
# Runs two real Kafka command-line clients against a fjord-broker that it starts:
#   - kcat (Debian's package, installed with apt-get if missing): metadata listing,
#     keyed lz4 producing, consuming back, and a balanced consumer group;
#   - kafka-python (PyPI, pinned, installed into a cached venv): see
#     scripts/ci/kafka_python_check.py (admin client, producer, consumer group).
#
# Environment:
#   FJORD_BROKER  the broker binary (default: ${CARGO_TARGET_DIR:-target}/debug/fjord-broker)
#   FJORD_CLI     the `fjord` CLI    (default: ${CARGO_TARGET_DIR:-target}/debug/fjord)
#   XDG_CACHE_HOME  the venv lives in ${XDG_CACHE_HOME:-$HOME/.cache}/fjord-ci/venv
#
# Prints one OK line per part; exits non-zero (with the broker log's tail) on a failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

KAFKA_PYTHON_VERSION=2.2.21
target_dir=${CARGO_TARGET_DIR:-target}
FJORD_BROKER=${FJORD_BROKER:-$target_dir/debug/fjord-broker}
FJORD_CLI=${FJORD_CLI:-$target_dir/debug/fjord}
venv=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/fjord-ci/venv

fail() {
    echo "kafka-clients: FAIL: $*" >&2
    exit 1
}

for bin in "$FJORD_BROKER" "$FJORD_CLI"; do
    [ -x "$bin" ] || fail "$bin is not an executable (build with cargo first, or set FJORD_BROKER / FJORD_CLI)"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fjord-kafka-clients.XXXXXX")
broker_pid=
broker_log=$tmp/broker.log

cleanup() {
    local status=$?
    trap - EXIT
    if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
        kill -TERM "$broker_pid" 2>/dev/null || true
        # A clean shutdown takes well under a second; don't hang CI if it doesn't happen.
        local waited=0
        while kill -0 "$broker_pid" 2>/dev/null && [ "$waited" -lt 300 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$broker_pid" 2>/dev/null; then
            echo "kafka-clients: the broker did not stop within 30 s of SIGTERM; killing it" >&2
            kill -KILL "$broker_pid" 2>/dev/null || true
        fi
        wait "$broker_pid" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ] && [ -s "$broker_log" ]; then
        echo "--- last 60 lines of the broker log ($broker_log) ---" >&2
        tail -n 60 "$broker_log" >&2
        echo "--- end of the broker log ---" >&2
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Tools -------------------------------------------------------------------------

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "kafka-clients: not root and no sudo; cannot run: $*" >&2
        return 1
    fi
}

apt_install() {
    local log=$tmp/apt.log
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >"$log" 2>&1; then
        # The package lists may be missing or stale: refresh them once and retry.
        if ! { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; } >>"$log" 2>&1; then
            tail -n 30 "$log" >&2
            fail "apt-get install $* failed"
        fi
    fi
}

if ! command -v kcat >/dev/null 2>&1; then
    echo "kafka-clients: installing kcat (Debian package)"
    apt_install kcat
fi

if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "kafka-clients: creating the venv $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        # Debian's python3 ships venv (and ensurepip) separately.
        rm -rf "$venv"
        apt_install python3-venv
        python3 -m venv "$venv" || fail "python3 -m venv $venv failed"
    fi
fi
py=$venv/bin/python
if ! "$py" -c "import sys, kafka; sys.exit(kafka.__version__ != '$KAFKA_PYTHON_VERSION')" >/dev/null 2>&1; then
    echo "kafka-clients: installing kafka-python==$KAFKA_PYTHON_VERSION (PyPI) into $venv"
    "$py" -m pip install --quiet --disable-pip-version-check "kafka-python==$KAFKA_PYTHON_VERSION" ||
        fail "pip install kafka-python==$KAFKA_PYTHON_VERSION failed"
fi

# --- Broker --------------------------------------------------------------------------

FJORD_LOG=info "$FJORD_BROKER" \
    --data-dir "$tmp/data" \
    --grpc-addr 127.0.0.1:0 \
    --http-addr 127.0.0.1:0 \
    --kafka-addr 127.0.0.1:0 \
    --group-initial-rebalance-delay-ms 200 \
    </dev/null >/dev/null 2>"$broker_log" &
broker_pid=$!

listening=
deadline=$((SECONDS + 60))
while :; do
    listening=$(grep -m1 'fjord-broker listening' "$broker_log" || true)
    [ -n "$listening" ] && break
    kill -0 "$broker_pid" 2>/dev/null || fail "the broker exited before listening"
    [ "$SECONDS" -lt "$deadline" ] || fail "the broker did not log 'fjord-broker listening' within 60 s"
    sleep 0.1
done

field() {
    # The value of `NAME=VALUE` in the listening line (fields are separated by spaces).
    local value
    value=$(tr ' ' '\n' <<<"$listening" | sed -n "s/^$1=//p" | head -n 1)
    [[ "$value" =~ ^[^[:space:]]+:[0-9]+$ ]] || fail "no $1=HOST:PORT in the line: $listening"
    printf '%s' "$value"
}
kafka_addr=$(field kafka_addr)
grpc_addr=$(field grpc_addr)
echo "kafka-clients: broker pid $broker_pid, kafka $kafka_addr, grpc $grpc_addr"

# --- kcat --------------------------------------------------------------------------

kcat_run() {
    # kcat never hangs CI: every call gets a bound.
    timeout 60 kcat -b "$kafka_addr" "$@"
}

topic=kcat-events
"$FJORD_CLI" --brokers "$grpc_addr" topic create "$topic" --partitions 3 >/dev/null ||
    fail "fjord topic create $topic --partitions 3"

kcat_run -L -t "$topic" >"$tmp/kcat-metadata.txt" 2>&1 ||
    { cat "$tmp/kcat-metadata.txt" >&2; fail "kcat -L"; }
grep -q "topic \"$topic\" with 3 partitions" "$tmp/kcat-metadata.txt" ||
    { cat "$tmp/kcat-metadata.txt" >&2; fail "kcat -L does not show $topic with 3 partitions"; }

for i in $(seq 0 99); do echo "key-$i:value-$i"; done >"$tmp/kcat-sent.txt"
kcat_run -t "$topic" -P -K: -z lz4 -X acks=all -X enable.idempotence=false <"$tmp/kcat-sent.txt" 2>"$tmp/kcat-produce.err" ||
    { cat "$tmp/kcat-produce.err" >&2; fail "kcat -P"; }
if grep -qi 'fail\|error' "$tmp/kcat-produce.err"; then
    cat "$tmp/kcat-produce.err" >&2
    fail "kcat -P reported errors"
fi

sort "$tmp/kcat-sent.txt" >"$tmp/kcat-sent.sorted"
kcat_run -t "$topic" -C -e -q -o beginning -f '%p %k:%s\n' >"$tmp/kcat-consumed.txt" ||
    fail "kcat -C"
cut -d' ' -f2- "$tmp/kcat-consumed.txt" | sort >"$tmp/kcat-consumed.sorted"
diff -u "$tmp/kcat-sent.sorted" "$tmp/kcat-consumed.sorted" >&2 ||
    fail "kcat -C did not read back exactly the 100 records produced (diff above)"
used=$(cut -d' ' -f1 "$tmp/kcat-consumed.txt" | sort -u | tr '\n' ' ')
[ "$used" = "0 1 2 " ] || fail "the 100 keyed records landed only in partitions: $used"

# A balanced consumer group: JoinGroup/SyncGroup/Heartbeat/OffsetCommit, exits on EOF of
# every assigned partition; its offsets are committed when it closes.
kcat_run -G kcat-group "$topic" -e -q -f '%k:%s\n' \
    -X auto.offset.reset=earliest >"$tmp/kcat-group.txt" 2>"$tmp/kcat-group.err" ||
    { cat "$tmp/kcat-group.err" >&2; fail "kcat -G"; }
sort "$tmp/kcat-group.txt" | diff -u "$tmp/kcat-sent.sorted" - >&2 ||
    fail "kcat -G did not read exactly the 100 records produced (diff above)"
"$FJORD_CLI" --brokers "$grpc_addr" group describe kcat-group >"$tmp/kcat-group-describe.txt" ||
    fail "fjord group describe kcat-group"
# Rows: TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID.
awk -v t="$topic" '$1 == t { rows++; sum += $3; if ($3 != $4 || $5 != 0) bad++ }
    END { exit !(rows == 3 && sum == 100 && !bad) }' "$tmp/kcat-group-describe.txt" ||
    { cat "$tmp/kcat-group-describe.txt" >&2; fail "kcat-group's committed offsets are not at the end of the 3 partitions"; }
echo "kafka-clients: OK kcat: metadata, 100 keyed lz4 records produced and read back, group kcat-group"

# --- kafka-python --------------------------------------------------------------------

timeout 120 "$py" scripts/ci/kafka_python_check.py "$kafka_addr" ||
    fail "scripts/ci/kafka_python_check.py (exit $?)"
echo "kafka-clients: OK kafka-python $KAFKA_PYTHON_VERSION: admin, producer, consumer group"
