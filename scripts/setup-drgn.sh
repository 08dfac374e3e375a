#!/usr/bin/env bash
# drgn, the kernel debugger the dump tests drive (`wasmvisor vm dump`,
# docs/snapshots.md), from PyPI into its own virtualenv:
#
#   scripts/setup-drgn.sh          # -> ~/.cache/wasmvisor/drgn-venv
#
# drgn ships manylinux wheels, so nothing is compiled. An existing venv
# with the pinned version is kept.
set -euo pipefail

version="${DRGN_VERSION:-0.3.0}"
venv="${WASMVISOR_DRGN_VENV:-$HOME/.cache/wasmvisor/drgn-venv}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import drgn, sys; sys.exit(drgn.__version__ != '$version')" 2>/dev/null; then
    echo "drgn $version already in $venv"
    exit 0
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q python3-venv >/dev/null
    else
        echo "$0: python3's venv module is missing; install python3-venv" >&2
        exit 1
    fi
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q "drgn==$version"
"$venv/bin/python" -c 'import drgn; print("drgn", drgn.__version__, "in", drgn.__file__)'
