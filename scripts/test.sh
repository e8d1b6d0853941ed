#!/usr/bin/env bash
# Every test, from a fresh clone: installs the test peers (kinesalite and kinesis-local from
# npm into .tools/, the reference codec aws-kinesis-agg from PyPI into .venv/), then checks
# formatting and lints, and runs every test. Needs: rustup's cargo, node/npm, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-node.sh
scripts/setup-python.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features
