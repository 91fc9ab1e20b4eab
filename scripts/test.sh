#!/usr/bin/env bash
# Runs all of Kaitian's tests: setup (installs and release build), swift build, swift test
# (serially: tests spawn processes and the machine may have 2 cores), then pytest over
# python/tests and bench/tests. Every stage runs even if an earlier one failed; a summary
# line per stage closes the output and the exit status is non-zero if any stage failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v swift >/dev/null 2>&1; then
  export PATH="/opt/swift/usr/bin:$PATH"
fi

STAGES=()
RESULTS=()
FAILED=0

record() {
  STAGES+=("$1")
  RESULTS+=("$2")
  if [[ "$2" == FAILED* ]]; then FAILED=1; fi
}

# run_stage NAME COMMAND...: runs COMMAND, records "ok" or "FAILED (exit N)".
run_stage() {
  local name=$1 status=0
  shift
  printf '\n==> stage %s: %s\n' "$name" "$*"
  "$@" || status=$?
  if [ "$status" -eq 0 ]; then
    record "$name" "ok"
  else
    record "$name" "FAILED (exit $status)"
  fi
}

# The test directories that hold pytest files (test_*.py or *_test.py).
pytest_dirs() {
  local dir
  for dir in python/tests bench/tests; do
    if [ -d "$dir" ] && [ -n "$(find "$dir" -type f \( -name 'test_*.py' -o -name '*_test.py' \) -print -quit)" ]; then
      echo "$dir"
    fi
  done
}

run_stage setup bash scripts/setup.sh
run_stage "swift build" swift build
run_stage "swift test" swift test --no-parallel

mapfile -t PYTEST_DIRS < <(pytest_dirs)
if [ "${#PYTEST_DIRS[@]}" -eq 0 ]; then
  printf '\n==> stage pytest: no test files in python/tests or bench/tests\n'
  record pytest "skipped (no test files)"
elif [ ! -x .venv/bin/python ]; then
  record pytest "FAILED (no .venv; setup failed)"
else
  # Exit 5 (nothing collected) is a failure here: these directories do hold test files.
  run_stage pytest .venv/bin/python -m pytest "${PYTEST_DIRS[@]}" -q
fi

printf '\n==> summary\n'
for i in "${!STAGES[@]}"; do
  printf '%-12s %s\n' "${STAGES[$i]}:" "${RESULTS[$i]}"
done
if [ "$FAILED" -ne 0 ]; then
  echo "test.sh: FAILED"
  exit 1
fi
echo "test.sh: all stages passed"
