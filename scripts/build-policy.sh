#!/usr/bin/env bash
# Builds one C, Python or JavaScript policy from its source directory into
# a component of world `policy` (docs/writing-a-policy.md):
#
#   scripts/build-policy.sh c|python|js SRC_DIR OUT.wasm
#
#   c       every *.c in SRC_DIR, with the bindings wit-bindgen generates
#   python  SRC_DIR/app.py (a Handler class), through componentize-py
#   js      SRC_DIR/app.js (an ES module exporting `handler`), through jco
#
# The tools come from scripts/setup-langs.sh (in $WASMVISOR_LANGS_DIR or
# ~/.cache/wasmvisor/langs). scripts/build-lang-policies.sh and the build.sh
# of every `wasmvisor policy new` scaffold call this script.
set -euo pipefail

if [ "$#" -ne 3 ]; then
  echo "usage: $0 c|python|js SRC_DIR OUT.wasm" >&2
  exit 2
fi
lang="$1"
src="$(cd "$2" && pwd)"
mkdir -p "$(dirname "$3")"
out="$(cd "$(dirname "$3")" && pwd)/$(basename "$3")"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${WASMVISOR_LANGS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/wasmvisor/langs}"
wit="$root/wit"
# Must match scripts/setup-langs.sh.
ADAPTER_VERSION=48.0.8

die() { echo "build-policy: error: $*" >&2; exit 1; }
# Runs a command, showing what it printed only if it fails.
quiet() {
  local log
  if ! log="$("$@" 2>&1)"; then
    echo "$log" >&2
    die "failed: $*"
  fi
}
need() { # path-or-command what
  if [[ "$1" == */* ]]; then [ -x "$1" ] || [ -f "$1" ]; else command -v "$1" >/dev/null 2>&1; fi \
    || die "$2 not found ($1); run scripts/setup-langs.sh"
}

wasm_tools="$cache/py/bin/wasm-tools"
need "$wasm_tools" "wasm-tools"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

case "$lang" in
  c)
    # wit-bindgen writes policy.h/policy.c (and the component type object)
    # from the WIT; clang links them with wasi-libc into a reactor module
    # (no main; `_initialize` runs the constructors); wasm-tools wraps it
    # into a component. The adapter turns any WASI preview1 import into
    # WASI 0.2; a policy that makes none leaves it out.
    wit_bindgen="$cache/cargo/bin/wit-bindgen"
    adapter="$cache/wasi_snapshot_preview1.reactor-$ADAPTER_VERSION.wasm"
    need clang "clang"
    need wasm-ld "lld's wasm-ld"
    need "$wit_bindgen" "wit-bindgen"
    need "$adapter" "the WASI preview1 reactor adapter"
    [ -f /usr/include/wasm32-wasi/stdlib.h ] || die "wasi-libc not found; run scripts/setup-langs.sh"
    shopt -s nullglob
    sources=("$src"/*.c)
    [ ${#sources[@]} -gt 0 ] || die "no .c files in $src"
    quiet "$wit_bindgen" c "$wit" --world policy --out-dir "$work"
    clang --target=wasm32-wasi -mexec-model=reactor -Os -s -Wall -Wextra \
      -I "$work" -o "$work/core.wasm" \
      "${sources[@]}" "$work/policy.c" "$work/policy_component_type.o"
    "$wasm_tools" component new "$work/core.wasm" \
      --adapt "wasi_snapshot_preview1=$adapter" -o "$out"
    ;;
  python)
    # componentize-py generates the bindings, snapshots CPython after
    # importing app.py, and links the result into a component. It writes
    # __pycache__ next to the source, so it builds from a copy.
    componentize_py="$cache/py/bin/componentize-py"
    need "$componentize_py" "componentize-py"
    [ -f "$src/app.py" ] || die "no app.py in $src"
    cp -r "$src/." "$work/"
    quiet "$componentize_py" -d "$wit" -w policy componentize -p "$work" app -o "$out"
    ;;
  js)
    # jco componentize embeds app.js in StarlingMonkey (componentize-js).
    # `-d all` leaves out every WASI feature the engine would otherwise
    # wire up (stdio, clocks, random, http): the host gives policies none
    # of them, and with clocks the engine reads the clock during init,
    # which traps without @wasi=clocks.
    jco="$cache/js/node_modules/.bin/jco"
    need node "Node.js"
    need "$jco" "jco"
    [ -f "$src/app.js" ] || die "no app.js in $src"
    cp "$src/app.js" "$work/"
    quiet "$jco" componentize "$work/app.js" --wit "$wit" -n policy -d all -o "$out"
    ;;
  *)
    die "unknown language '$lang': use c, python or js"
    ;;
esac

# The component must export the handler and import nothing but the host
# interface and WASI 0.2.
world="$("$wasm_tools" component wit "$out" | sed -n '/^world root {/,/^}/p')"
grep -q '^  export wasmvisor:policy/handler@0.1.0;' <<<"$world" \
  || die "$out does not export wasmvisor:policy/handler@0.1.0"
if grep '^  import ' <<<"$world" \
   | grep -v -e 'import wasmvisor:policy/\(host\|types\)@0.1.0;' -e 'import wasi:[a-z-]*/[a-z-]*@0\.2\.[0-9]*;' >&2; then
  die "$out has imports the host does not provide (above)"
fi
echo "build-policy: $(basename "$out"): $(stat -c %s "$out") bytes, built in $((SECONDS - started)) s"
