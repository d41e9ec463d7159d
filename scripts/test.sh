#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs when missing:
# Debian's chromium and Node.js (apt), and playwright-core (npm, no browser
# download). Every suite runs; a missing tool is installed or the run fails.
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

# One tungstenite in the tree (axum's): `cargo tree -i` fails if two are.
cargo tree -q -i tungstenite --all-features >/dev/null
# Unit, corpus (insta), session, WebSocket, JS-model-mirror, error and doc tests.
cargo test --all-features
# Property tests again in release mode with many more cases.
PROPTEST_CASES=${PROPTEST_CASES:-20000} cargo test --release --all-features --test proptest --test escape
# The wire decoders (Rust and JS) over frames an attacker could send (capped at 5000 sequences).
PROPTEST_CASES=${PROPTEST_CASES:-20000} cargo test --release --all-features --test wire_decoder
# 100,000 anonymous page loads against 20 users with open sockets.
FLOOD_SESSIONS=${FLOOD_SESSIONS:-100000} cargo test --release --all-features --test page_flood
# The examples assert what they show (each tab ends with a fresh render).
cargo run --quiet --example sessions >/dev/null
cargo run --quiet --example fragments >/dev/null
cargo run --quiet --example edits >/dev/null
[ "$(cargo run --quiet --example keygen 2>/dev/null | wc -c)" = 44 ]
# Real-browser tests of every browser example in headless Chromium.
cargo build --quiet --examples
# Bounded: a hung browser step fails the run instead of stalling it.
timeout 900 node tests/browser/run.mjs
# The Autobahn WebSocket conformance suite (fails without Python 2.7 unless
# AUTOBAHN_SKIP=1 is set).
bash scripts/autobahn.sh
