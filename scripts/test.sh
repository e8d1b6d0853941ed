#!/usr/bin/env bash
# Every test, from a fresh clone: installs the test peers (kinesalite and kinesis-local from
# npm into .tools/, the reference codec aws-kinesis-agg from PyPI into .venv/), then checks
# formatting and lints, runs every test (doc tests and the README's code blocks included; the
# producer examples run against kpl sim), then kpl for Python's pytest suite (python/tests,
# against target/debug/kpl's sim and kinesalite) in .venv-py/, which
# scripts/setup-python-kpl.sh builds (pip fetches maturin; a dev-profile build of the
# extension), and builds the docs with warnings as errors. Needs: rustup's cargo, node/npm,
# python3.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-node.sh
scripts/setup-python.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features
# The Python tests run the CLI's sim and reader: build it (cargo test built it already).
cargo build -p kpl-cli
scripts/setup-python-kpl.sh
# pytest exits 5 when it collects no test: set -e fails the run then, as on any failure.
.venv-py/bin/python -m pytest python/tests -q
# The API docs build without a warning (broken intra-doc links included).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --workspace
