#!/usr/bin/env bash
# Runs the test suite; pytest's exit code 5 ("no tests collected") is a failure, not a pass.
set -uo pipefail
py=$1; shift
"$py" -m pytest tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "run_tests: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
