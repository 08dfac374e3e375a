#!/usr/bin/env bash
# `make test` (and CI, through .ci/run): install what a fresh machine
# lacks, build once, lint, and run the whole suite, printing each phase
# with its duration (and a table of them at the end, also written to
# target/test-phases.txt). docs/ci.md explains the phases and the figures.
#
# One compilation profile: the release binary the end-to-end tests drive,
# the tests themselves and the fuzz replay all build in `release`, so
# wasmtime is compiled once for them (clippy needs its own check build).
# The language toolchains and the test kernel download in the background
# while the workspace compiles.
#
# Environment:
#   CARGO            cargo command (default cargo)
#   TEST_THREADS     tests run at once (default: the number of CPUs)
#   TEST_ARGS        extra arguments for the test runner, e.g. a filter
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
CARGO=${CARGO:-cargo}
logs="$root/target/test-logs"
mkdir -p "$logs"
phases="$root/target/test-phases.txt"
: >"$phases"
t_start=$(date +%s)

say() { echo "test: $*" >&2; }

# phase NAME CMD...: runs CMD, prints the phase's start and duration.
phase() {
  local name=$1 t0 rc
  shift
  say "== $name"
  t0=$(date +%s)
  set +e
  "$@"
  rc=$?
  set -e
  local secs=$(($(date +%s) - t0))
  printf '%-16s %5d s%s\n' "$name" "$secs" "$([ $rc -eq 0 ] || echo "  FAILED (exit $rc)")" >>"$phases"
  if [ $rc -ne 0 ]; then
    say "== $name FAILED after ${secs} s (exit $rc)"
    summary
    exit "$rc"
  fi
  say "== $name: ${secs} s"
}

summary() {
  say "phases (total $(($(date +%s) - t_start)) s):"
  sed 's/^/test:   /' "$phases" >&2
}

# bg NAME CMD...: starts CMD in the background, its output in a log;
# join NAME waits for it as a phase of its own (the time spent waiting
# there; the job's own duration is in its log's last line).
declare -A bg_pid
bg() {
  local name=$1
  shift
  say "-- $name starts in the background (log: target/test-logs/$name.log)"
  (
    t0=$(date +%s)
    "$@" && rc=0 || rc=$?
    echo "$name: exit $rc after $(($(date +%s) - t0)) s"
    exit "$rc"
  ) >"$logs/$name.log" 2>&1 &
  bg_pid[$name]=$!
}
join_bg() {
  local name=$1
  if ! wait "${bg_pid[$name]}"; then
    tail -n 30 "$logs/$name.log" >&2
    return 1
  fi
  tail -n 1 "$logs/$name.log" | sed 's/^/test: /' >&2
}

# The test runner: nextest where it is installed (it runs tests from every
# binary side by side, so the Linux boot overlaps the rest), else cargo
# test. Doctests (which nextest does not run) go first, so the runner's
# summary closes the output, followed by one "N passed, N failed" line.
run_tests() {
  local threads=${TEST_THREADS:-$(nproc)} log="$logs/tests.log" passed failed
  # shellcheck disable=SC2086 # TEST_ARGS is a list of words
  if cargo nextest --version >/dev/null 2>&1; then
    $CARGO test --release --workspace --doc ${TEST_ARGS:-}
    local rc=0
    $CARGO nextest run --release --workspace --no-fail-fast \
      --test-threads "$threads" --final-status-level fail ${TEST_ARGS:-} 2>&1 | tee "$log" ||
      rc=${PIPESTATUS[0]}
    # The counts of nextest's summary line (no "failed" when none did).
    passed=$(grep -oE '[0-9]+ passed' "$log" | tail -n 1 | cut -d' ' -f1 || true)
    failed=$(grep -oE '[0-9]+ failed' "$log" | tail -n 1 | cut -d' ' -f1 || true)
    echo "tests: ${passed:-0} passed, ${failed:-0} failed"
    return "$rc"
  else
    $CARGO test --release --workspace --no-fail-fast ${TEST_ARGS:-} -- --test-threads "$threads"
  fi
}

phase setup bash -c 'bash scripts/setup.sh && bash scripts/setup-langs.sh --apt'
bg langs bash scripts/setup-langs.sh --no-apt
bg kernel bash -c 'bash scripts/fetch-kernel.sh target/assets/linux && bash scripts/setup-drgn.sh'
phase fmt "$CARGO" fmt --all --check
phase build make --no-print-directory build
phase test-build "$CARGO" test --release --workspace --no-run
phase lint make --no-print-directory clippy
phase langs join_bg langs
phase lang-policies bash scripts/build-lang-policies.sh target/assets/policies
phase kernel join_bg kernel
phase tests run_tests
summary
