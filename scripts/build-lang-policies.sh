#!/usr/bin/env bash
# Builds the conformance policy (docs/conformance.md) from its C, Python
# and JavaScript sources into components of world `policy`:
#
#   scripts/build-lang-policies.sh OUT_DIR
#
# writes OUT_DIR/conformance-c.wasm, conformance-py.wasm and
# conformance-js.wasm, each with scripts/build-policy.sh. The tools come
# from scripts/setup-langs.sh.
set -euo pipefail

if [ "$#" -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/scripts/build-policy.sh"
bash "$build" c "$root/policies/conformance-c" "$1/conformance-c.wasm"
bash "$build" python "$root/policies/conformance-py" "$1/conformance-py.wasm"
bash "$build" js "$root/policies/conformance-js" "$1/conformance-js.wasm"
