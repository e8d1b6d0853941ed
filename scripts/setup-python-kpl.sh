#!/usr/bin/env bash
# Builds kpl for Python (python/, PyPI name kpl-kinesis) into .venv-py/ (gitignored) with
# what its tests need: pytest, and the reference codec aws-kinesis-agg (+ six) for readback.
# `pip install ./python` fetches maturin from PyPI and builds the extension with cargo; for the
# tests it is a dev-profile build (MATURIN_PEP517_ARGS="--profile dev", reusing target/debug's
# dependencies): set KPL_PY_PROFILE=release for a release build (the benchmark does).
# Re-running rebuilds only what cargo finds changed.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${KPL_PY_PROFILE:-dev}
venv=${KPL_PY_VENV:-.venv-py}
command -v python3 >/dev/null || { echo "setup-python-kpl.sh: python3 is missing" >&2; exit 1; }
py=$venv/bin/python
if ! [ -x "$py" ] || ! "$py" -c "import pytest, aws_kinesis_agg, six" 2>/dev/null; then
  python3 -m venv "$venv"
  "$py" -m pip install --quiet --disable-pip-version-check pytest aws-kinesis-agg==1.2.3 six
fi
MATURIN_PEP517_ARGS="--profile $profile" \
  "$py" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./python
"$py" -c "import kpl"
