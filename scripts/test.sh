#!/usr/bin/env bash
# Runs the whole test suite. Installs nothing today: the fragment engine's and
# the sessions' tests need only the Rust toolchain. (Later suites add their
# set-up here.)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
# Unit, corpus (insta), error and doc tests.
cargo test --all-features
# Property tests again in release mode with many more cases.
PROPTEST_CASES=${PROPTEST_CASES:-20000} cargo test --release --all-features --test proptest
# The examples assert what they show (each tab ends with a fresh render).
cargo run --quiet --example sessions >/dev/null
cargo run --quiet --example fragments >/dev/null
