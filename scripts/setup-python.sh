#!/usr/bin/env bash
# Installs the reference KPL codec, PyPI aws-kinesis-agg (+ six, which it imports without
# declaring), into .venv/ (gitignored) for the interop tests. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ] && .venv/bin/python -c "import aws_kinesis_agg, six" 2>/dev/null; then
  exit 0
fi
command -v python3 >/dev/null || { echo "setup-python.sh: python3 is missing" >&2; exit 1; }
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check aws-kinesis-agg==1.2.3 six
