#!/usr/bin/env bash
# Builds release, starts a throwaway synchub (fresh data dir, random API key
# and HMAC secret), waits for /healthz, runs `synchub-load fanout` with the
# given extra arguments, then stops the hub with SIGTERM.
#
#   load-tests/run-fanout.sh --connections 2000 --channels 10 --rate 1000 --duration 30
#   load-tests/run-fanout.sh --format protobuf > result.json
#
# stdout carries only the scenario's JSON result line; everything else goes
# to stderr. Exit status is the scenario's: 0 clean, 3 completed but not clean
# (loss, duplicates, errors, disconnects), anything else a failure.
# Environment: SYNCHUB_LOAD_PORT (default 18000), SYNCHUB_LOAD_SKIP_BUILD=1,
# SYNCHUB_LOAD_NODES=N with SYNCHUB_LOAD_REDIS=redis://... to start N hubs on
# one Redis (ports PORT..PORT+N-1, a fresh key prefix); connections are spread
# over the nodes and every publish goes through the first node's API, so most
# deliveries cross nodes. CARGO_TARGET_DIR is honoured.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
port="${SYNCHUB_LOAD_PORT:-18000}"
base="http://127.0.0.1:${port}"

nodes="${SYNCHUB_LOAD_NODES:-1}"
redis_url="${SYNCHUB_LOAD_REDIS:-}"
if [[ "$nodes" -gt 1 && -z "$redis_url" ]]; then
    echo "run-fanout: SYNCHUB_LOAD_NODES>1 needs SYNCHUB_LOAD_REDIS" >&2
    exit 2
fi
bin="${CARGO_TARGET_DIR:-target}/release"

if [[ "${SYNCHUB_LOAD_SKIP_BUILD:-0}" != 1 ]]; then
    cargo build --release -p synchub -p synchub-load-tests >&2
fi

if curl -s -o /dev/null "${base}/healthz"; then
    echo "run-fanout: something already listens on port ${port}; set SYNCHUB_LOAD_PORT" >&2
    exit 1
fi

# Both processes hold one socket per connection; 1024 is too few.
hard="$(ulimit -Hn)"
if [[ "$hard" == unlimited ]]; then ulimit -n 65536; else ulimit -n "$hard"; fi

random_hex() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
data_dir="$(mktemp -d -t synchub-load.XXXXXX)"
export SYNCHUB_API_KEY="$(random_hex)"
export SYNCHUB_TOKEN_HMAC_SECRET="$(random_hex)"

server_pids=()
stop_server() {
    for pid in "${server_pids[@]}"; do
        kill -0 "$pid" 2>/dev/null && kill -TERM "$pid"
    done
    for pid in "${server_pids[@]}"; do
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "run-fanout: hub ${pid} ignored SIGTERM for 15 s; killing it" >&2
            kill -KILL "$pid"
        fi
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$data_dir"
}
trap stop_server EXIT

prefix="load$(random_hex | head -c 8)"
ws_urls=""
for i in $(seq 0 $((nodes - 1))); do
    node_port=$((port + i))
    mkdir -p "${data_dir}/node${i}"
    if [[ -n "$redis_url" ]]; then
        SYNCHUB_REDIS_URL="$redis_url" SYNCHUB_REDIS_PREFIX="$prefix" \
            SYNCHUB_LISTEN="127.0.0.1:${node_port}" SYNCHUB_DATA_DIR="${data_dir}/node${i}" \
            "${bin}/synchub" >"${data_dir}/node${i}/synchub.log" 2>&1 &
    else
        SYNCHUB_LISTEN="127.0.0.1:${node_port}" SYNCHUB_DATA_DIR="${data_dir}/node${i}" \
            "${bin}/synchub" >"${data_dir}/node${i}/synchub.log" 2>&1 &
    fi
    pid=$!
    server_pids+=("$pid")
    status=""
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "run-fanout: hub ${i} exited during start-up; its log:" >&2
            cat "${data_dir}/node${i}/synchub.log" >&2
            exit 1
        fi
        status="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${node_port}/readyz" || true)"
        [[ "$status" == 200 ]] && break
        sleep 0.1
    done
    if [[ "$status" != 200 ]]; then
        echo "run-fanout: hub ${i} not ready within 30 s; log:" >&2
        tail -n 50 "${data_dir}/node${i}/synchub.log" >&2
        exit 1
    fi
    ws_urls="${ws_urls:+${ws_urls},}ws://127.0.0.1:${node_port}/connection/websocket"
done
echo "run-fanout: ${nodes} hub(s) up from port ${port} (pids ${server_pids[*]})" >&2

set +e
"${bin}/synchub-load" fanout \
    --ws-url "$ws_urls" \
    --api-url "$base" \
    "$@"
result=$?
set -e

# The hub's share of the machine, to compare with the generator's
# `generator_cpu_s` (both from /proc; Linux only).
for pid in "${server_pids[@]}"; do
    if [[ -r "/proc/${pid}/stat" ]]; then
        hub_cpu="$(awk '{ printf "%.1f", ($14 + $15) / 100 }' "/proc/${pid}/stat")"
        echo "run-fanout: hub ${pid} used ${hub_cpu} CPU seconds (start-up and ramp included)" >&2
    fi
done

if [[ $result -ne 0 && $result -ne 3 ]]; then
    echo "run-fanout: the scenario failed (exit ${result}); hub log tail:" >&2
    tail -n 30 "${data_dir}"/node*/synchub.log >&2
fi
exit "$result"
