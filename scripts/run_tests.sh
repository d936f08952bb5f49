#!/usr/bin/env bash
# Runs the test suite; pytest's exit code 5 ("no tests collected") is a failure, not a pass.
# Tests marked `slow` run in CI (CI=true) or with SLOW=1; locally they are skipped by default.
set -uo pipefail
py=$1; shift
marker=(-m "not slow")
if [ -n "${CI:-}" ] || [ -n "${SLOW:-}" ]; then marker=(); fi
"$py" -m pytest tests "${marker[@]}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "run_tests: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
