#!/usr/bin/env bash
# Installs the P3 comparison peers into .venv-bench/ (gitignored), apart from the interop
# .venv so its pins cannot disturb the tests: PyPI aiokpl 0.2.0 (pure-Python async KPL port,
# pulls in aiobotocore/botocore, which P3 also uses to create and read the stream) and the
# reference codec aws-kinesis-agg 1.2.3 (+ six, which it imports without declaring).
# Idempotent: does nothing when the pinned versions are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv-bench/bin/python
check='import importlib.metadata as m, six, botocore, aws_kinesis_agg, aiokpl
assert m.version("aiokpl") == "0.2.0" and m.version("aws-kinesis-agg") == "1.2.3"'
if [ -x "$py" ] && "$py" -c "$check" 2>/dev/null; then
  exit 0
fi
command -v python3 >/dev/null || { echo "setup-aiokpl.sh: python3 is missing" >&2; exit 1; }
python3 -m venv .venv-bench
"$py" -m pip install --quiet --disable-pip-version-check aiokpl==0.2.0 aws-kinesis-agg==1.2.3 six
"$py" -c "$check"
