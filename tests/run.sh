#!/usr/bin/env bash
# The whole test suite: sets up .venv with the test requirements, then runs pytest.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not slow"` or `-k parity`.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh requirements-test.txt
exec python -m pytest -q -n 2 --durations=15 "$@"
