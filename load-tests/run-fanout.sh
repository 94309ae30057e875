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
# Environment: SYNCHUB_LOAD_PORT (default 18000), SYNCHUB_LOAD_SKIP_BUILD=1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
port="${SYNCHUB_LOAD_PORT:-18000}"
base="http://127.0.0.1:${port}"

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

server_pid=""
stop_server() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid"
        for _ in $(seq 1 150); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$server_pid" 2>/dev/null; then
            echo "run-fanout: hub ignored SIGTERM for 15 s; killing it" >&2
            kill -KILL "$server_pid"
        fi
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$data_dir"
}
trap stop_server EXIT

SYNCHUB_LISTEN="127.0.0.1:${port}" SYNCHUB_DATA_DIR="$data_dir" \
    target/release/synchub >"${data_dir}/synchub.log" 2>&1 &
server_pid=$!

for _ in $(seq 1 300); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "run-fanout: the hub exited during start-up; its log:" >&2
        cat "${data_dir}/synchub.log" >&2
        exit 1
    fi
    status="$(curl -s -o /dev/null -w '%{http_code}' "${base}/healthz" || true)"
    [[ "$status" == 200 ]] && break
    sleep 0.1
done
if [[ "${status:-}" != 200 ]]; then
    echo "run-fanout: /healthz did not answer 200 within 30 s; hub log:" >&2
    tail -n 50 "${data_dir}/synchub.log" >&2
    exit 1
fi
echo "run-fanout: hub up on port ${port} (pid ${server_pid})" >&2

set +e
target/release/synchub-load fanout \
    --ws-url "ws://127.0.0.1:${port}/connection/websocket" \
    --api-url "$base" \
    "$@"
result=$?
set -e

# The hub's share of the machine, to compare with the generator's
# `generator_cpu_s` (both from /proc; Linux only).
if [[ -r "/proc/${server_pid}/stat" ]]; then
    hub_cpu="$(awk '{ printf "%.1f", ($14 + $15) / 100 }' "/proc/${server_pid}/stat")"
    echo "run-fanout: hub used ${hub_cpu} CPU seconds (start-up and ramp included)" >&2
fi

if [[ $result -ne 0 && $result -ne 3 ]]; then
    echo "run-fanout: the scenario failed (exit ${result}); hub log tail:" >&2
    tail -n 30 "${data_dir}/synchub.log" >&2
fi
exit "$result"
