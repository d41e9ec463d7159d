#!/usr/bin/env bash
# Load over two todos instances in a cluster on one Redis, all on this
# machine (loopback): a redis-server of its own (append-only, everysec, on
# a free port, in a temporary directory), two release builds of the todos
# demo (STATETEMPLATE_STORE=redis), and the load client against both.
# Everything it starts is stopped by PID at the end.
#
#   scripts/cluster_load.sh                      # 100,000 sessions, 15,000 sockets, 60 s
#   SESSIONS=7500 SOCKETS=15000 SPREAD=1 scripts/cluster_load.sh   # tab 2 on the other instance
#   DURATION=10m scripts/cluster_load.sh         # the soak
#
# Settings (environment): SESSIONS (100000), SOCKETS (15000), RATE events/s
# (200), DURATION (60s), CLOCK_MS (the demo's clock: 500; 0 none), SPREAD
# (1: --spread-tabs), REPLAY_FRAMES (the engine's, default 64), OUT (a
# file for the report; default stdout).
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-100000}
SOCKETS=${SOCKETS:-15000}
RATE=${RATE:-200}
DURATION=${DURATION:-60s}
CLOCK_MS=${CLOCK_MS:-500}
SPREAD=${SPREAD:-0}
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
ulimit -n 20000 2>/dev/null || true
cargo build --quiet --release --all-features --example todos --example load --example keygen
DIR=$(mktemp -d)
PIDS=()
stop() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP_LOGS:-}" ] && cat "$DIR"/server*.log >&2
  rm -rf "$DIR"
}
trap stop EXIT
free_port() {
  local base=$(( $1 + RANDOM % 1000 ))
  for p in $(seq "$base" $((base + 100))); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "no free port" >&2; exit 1
}
RPORT=$(free_port 27000)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync everysec \
  --dir "$DIR" --logfile "$DIR/redis.log" --daemonize no &
PIDS+=($!)
REDIS_PID=$!
for _ in $(seq 1 100); do
  [ "$(redis-cli -p "$RPORT" ping 2>/dev/null)" = PONG ] && break
  sleep 0.1
done
KEYS=$(target/release/examples/keygen 2>/dev/null)
URLS=""
SPIDS=()
for i in 0 1; do
  port=$(free_port $((28000 + i * 1000)))
  env STATETEMPLATE_STORE=redis STATETEMPLATE_REDIS_URL="redis://127.0.0.1:$RPORT" \
    STATETEMPLATE_KEYS="$KEYS" STATETEMPLATE_CLOCK_MS="$CLOCK_MS" \
    STATETEMPLATE_MAX_SESSIONS=200000 STATETEMPLATE_MAX_UNJOINED=200000 \
    STATETEMPLATE_REPLAY_FRAMES="${REPLAY_FRAMES:-64}" \
    ADDR="127.0.0.1:$port" target/release/examples/todos >"$DIR/server$i.log" 2>&1 &
  PIDS+=($!)
  SPIDS+=(--server-pid $!)
  URLS="$URLS${URLS:+,}http://127.0.0.1:$port/"
  for _ in $(seq 1 100); do
    grep -q "^listening on" "$DIR/server$i.log" && break
    sleep 0.1
  done
done
echo "redis-server $REDIS_PID on port $RPORT; instances: $URLS (pids ${SPIDS[*]})"
extra=()
[ "$SPREAD" = 1 ] && extra+=(--spread-tabs)
set +e
target/release/examples/load --url "$URLS" "${extra[@]}" --sessions "$SESSIONS" --sockets "$SOCKETS" \
  --events-per-sec "$RATE" --duration "$DURATION" --progress 30s "${SPIDS[@]}" --setup-timeout 900s \
  | tee ${OUT:-/dev/null}
rc=${PIPESTATUS[0]}
echo "redis: $(redis-cli -p "$RPORT" info memory | grep used_memory_human:) keys: $(redis-cli -p "$RPORT" dbsize) rss of redis-server: $(grep VmRSS /proc/$REDIS_PID/status | awk '{print $2/1024 " MiB"}')"
exit "$rc"
