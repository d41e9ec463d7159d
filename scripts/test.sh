#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs when missing:
# Debian's chromium, Node.js and redis-server (apt), and playwright-core
# (npm, no browser download). Every suite runs; a missing tool is installed
# or the run fails. A redis-server of its own runs for the length of the
# script (stopped on exit).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
apt_install() {
  echo "installing $* (apt)"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || apt_install nodejs npm
[ -x /usr/bin/chromium ] || apt_install chromium
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# A Redis of this run's own for the RedisStore tests (tests/redis_store.rs
# and the crash loop on Redis): on a free loopback port, no RDB snapshots,
# an append-only file in a temporary directory with `appendfsync everysec`.
# Why not `always`: the crash loop SIGKILLs the app server, not Redis, and
# Redis writes each change to its AOF before it answers (everysec only
# delays the fsync), so what was acknowledged survives even a kill of
# Redis; `always` would add an fsync per write and guard only against a
# machine crash, which no test here makes. Stopped by its PID on exit.
command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || apt_install redis-server
REDIS_DIR=$(mktemp -d)
REDIS_PID=""
LOAD_PID=""
LOAD_PID2=""
stop_redis() {
  for p in $LOAD_PID $LOAD_PID2; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ -n "$REDIS_PID" ]; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  rm -rf "$REDIS_DIR"
}
trap stop_redis EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
REDIS_PORT=""
base=$((16379 + RANDOM % 1000))
for p in $(seq "$base" $((base + 50))); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then REDIS_PORT=$p; break; fi
done
[ -n "$REDIS_PORT" ] || { echo "no free loopback port for redis-server" >&2; exit 1; }
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes \
  --appendfsync everysec --dir "$REDIS_DIR" --logfile "$REDIS_DIR/redis.log" --daemonize no &
REDIS_PID=$!
for _ in $(seq 1 100); do
  [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
  kill -0 "$REDIS_PID" 2>/dev/null || break
  sleep 0.1
done
if [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" != PONG ]; then
  echo "redis-server did not answer on 127.0.0.1:$REDIS_PORT within 10 s:" >&2
  cat "$REDIS_DIR/redis.log" >&2 || true
  exit 1
fi
export STATETEMPLATE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
echo "redis-server $REDIS_PID on $STATETEMPLATE_REDIS_URL"

# One tungstenite in the tree (axum's): `cargo tree -i` fails if two are.
cargo tree -q -i tungstenite --all-features >/dev/null
# Unit, corpus (insta), session, WebSocket, JS-model-mirror, error and doc
# tests; the RedisStore tests against the Redis above; the crash loop on SQLite.
cargo test --all-features
# The crash loop again with the sessions in Redis.
CRASH_STORE=redis cargo test --all-features --test crash_loop
# Several instances on one Redis (separate processes): fan-out, resume on
# another instance, the owner SIGKILLed, the lease moving, broadcast and
# presence, and a Redis of the test's own restarted mid-run.
cargo test --all-features --test cluster
# Property tests again in release mode with many more cases.
PROPTEST_CASES=${PROPTEST_CASES:-20000} cargo test --release --all-features --test proptest --test escape
# The wire decoders (Rust and JS) over frames an attacker could send (capped at 5000 sequences).
PROPTEST_CASES=${PROPTEST_CASES:-20000} cargo test --release --all-features --test wire_decoder
# 100,000 anonymous page loads against 20 users with open sockets.
FLOOD_SESSIONS=${FLOOD_SESSIONS:-100000} cargo test --release --all-features --test page_flood
# The examples assert what they show (each tab ends with a fresh render).
cargo run --quiet --all-features --example sessions >/dev/null
cargo run --quiet --all-features --example fragments >/dev/null
cargo run --quiet --all-features --example edits >/dev/null
[ "$(cargo run --quiet --all-features --example keygen 2>/dev/null | wc -c)" = 44 ]
# The examples build with the default features too (the README's demo
# command, `cargo run --example todos`, uses them).
cargo build --quiet --examples
# Real-browser tests of every browser example in headless Chromium (built
# with every feature: the two-instance test runs todos on Redis).
cargo build --quiet --examples --all-features
# The load client (examples/load.rs) against the todos demo on a free
# loopback port with a temp DB: 20 sessions, 10 sockets, 5 s of events; the
# report must say no errors and every event answered. Bounded; the server
# is stopped by its PID (also on exit, with Redis).
LOAD_DIR=$(mktemp -d)
LOAD_PORT=""
base=$((23000 + RANDOM % 1000))
for p in $(seq "$base" $((base + 50))); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then LOAD_PORT=$p; break; fi
done
[ -n "$LOAD_PORT" ] || { echo "no free loopback port for the load test" >&2; exit 1; }
STATETEMPLATE_DB="$LOAD_DIR/todos.db" ADDR="127.0.0.1:$LOAD_PORT" \
  cargo run --quiet --all-features --example todos >"$LOAD_DIR/server.log" 2>&1 &
LOAD_PID=$!
for _ in $(seq 1 100); do
  grep -q "^listening on" "$LOAD_DIR/server.log" && break
  kill -0 "$LOAD_PID" 2>/dev/null || break
  sleep 0.1
done
timeout 60 cargo run --quiet --all-features --example load -- --url "http://127.0.0.1:$LOAD_PORT/" \
  --sessions 20 --sockets 10 --events-per-sec 20 --duration 5s --server-pid "$LOAD_PID" \
  >"$LOAD_DIR/report.txt" 2>&1 || { cat "$LOAD_DIR/report.txt" "$LOAD_DIR/server.log" >&2; exit 1; }
grep -q '^errors: 0$' "$LOAD_DIR/report.txt" &&
  grep -q 'sockets: 10 connected' "$LOAD_DIR/report.txt" &&
  grep -Eq 'events: sent [1-9][0-9]*, answered [0-9]+, unanswered 0,' "$LOAD_DIR/report.txt" ||
  { echo "load test: the report shows errors or unanswered events:" >&2; cat "$LOAD_DIR/report.txt" >&2; exit 1; }
kill "$LOAD_PID"; wait "$LOAD_PID" 2>/dev/null || true
LOAD_PID=""
rm -rf "$LOAD_DIR"
echo "load test: ok (20 sessions, 10 sockets, every event answered)"
# The same over two todos instances in a cluster on the Redis above: each
# session's second tab on the other instance (--spread-tabs), so half the
# sockets follow a session owned elsewhere.
LOAD_DIR=$(mktemp -d)
ports=()
base=$((24000 + RANDOM % 1000))
for p in $(seq "$base" $((base + 50))); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then ports+=("$p"); fi
  [ "${#ports[@]}" = 2 ] && break
done
[ "${#ports[@]}" = 2 ] || { echo "no free loopback ports for the two-instance load test" >&2; exit 1; }
CLUSTER_KEYS=$(cargo run --quiet --all-features --example keygen 2>/dev/null)
for i in 0 1; do
  STATETEMPLATE_STORE=redis STATETEMPLATE_REDIS_PREFIX="st-load-$$:" STATETEMPLATE_KEYS="$CLUSTER_KEYS" \
    ADDR="127.0.0.1:${ports[$i]}" target/debug/examples/todos >"$LOAD_DIR/server$i.log" 2>&1 &
  if [ "$i" = 0 ]; then LOAD_PID=$!; else LOAD_PID2=$!; fi
done
for i in 0 1; do
  for _ in $(seq 1 100); do
    grep -q "^listening on" "$LOAD_DIR/server$i.log" && break
    sleep 0.1
  done
done
timeout 60 cargo run --quiet --all-features --example load -- \
  --url "http://127.0.0.1:${ports[0]}/,http://127.0.0.1:${ports[1]}/" --spread-tabs \
  --sessions 20 --sockets 40 --events-per-sec 20 --duration 5s \
  --server-pid "$LOAD_PID" --server-pid "$LOAD_PID2" \
  >"$LOAD_DIR/report.txt" 2>&1 || { cat "$LOAD_DIR/report.txt" "$LOAD_DIR"/server*.log >&2; exit 1; }
grep -q '^errors: 0$' "$LOAD_DIR/report.txt" &&
  grep -q 'sockets: 40 connected' "$LOAD_DIR/report.txt" &&
  grep -Eq 'events: sent [1-9][0-9]*, answered [0-9]+, unanswered 0,' "$LOAD_DIR/report.txt" ||
  { echo "two-instance load test: errors or unanswered events:" >&2; cat "$LOAD_DIR/report.txt" >&2; exit 1; }
kill "$LOAD_PID" "$LOAD_PID2"; wait "$LOAD_PID" "$LOAD_PID2" 2>/dev/null || true
LOAD_PID=""; LOAD_PID2=""
rm -rf "$LOAD_DIR"
echo "two-instance load test: ok (20 sessions, 40 sockets over 2 instances, every event answered)"
# Bounded: a hung browser step fails the run instead of stalling it.
timeout 900 node tests/browser/run.mjs
# The Autobahn WebSocket conformance suite (fails without Python 2.7 unless
# AUTOBAHN_SKIP=1 is set).
bash scripts/autobahn.sh
