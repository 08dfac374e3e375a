#!/usr/bin/env bash
# Records which functions of the wasmvisor binary a run executes, into
# host/cli/symbol-order.txt, which the linker uses to place them together
# (host/cli/build.rs; docs/performance.md §8). Rerun it after changes that
# move the start-up or exit path into other functions; names that no
# longer exist are skipped by the linker, so a stale file only costs
# memory, never correctness.
#
#   scripts/symbol-order.sh        # needs `make build`, valgrind, /dev/kvm
#
# The runs recorded: the benchmark guest under one precompiled policy
# (start-up, the policy's calls, exit), and the same guest with the native
# UART. Valgrind's callgrind lists every function executed, by its
# linker (mangled) name.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/target/release/wasmvisor"
assets="$root/target/assets"
out="$root/host/cli/symbol-order.txt"

if ! command -v valgrind >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q valgrind >/dev/null
    else
        echo "$0: valgrind is missing; install it" >&2
        exit 1
    fi
fi
for f in "$bin" "$assets/guests/bench.bin" "$assets/policies/serial.wasm"; do
    [ -e "$f" ] || { echo "$0: $f is missing: run \`make build\` first" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cache="$work/cache"
# Precompiled under valgrind too: its virtual CPU has other features than
# the host's, and a cache entry is only used by an engine of the same CPU
# flags. A miss would record the compiler's functions as well.
valgrind --tool=none -q "$bin" policy precompile --policy-cache "$cache" \
    "$assets/policies/serial.wasm" >/dev/null

record() {
    local name="$1"; shift
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/$name.cg" \
        "$bin" run --guest "$assets/guests/bench.bin" "$@" >/dev/null 2>"$work/$name.log" || {
        echo "$0: the $name run failed:" >&2
        tail -n 20 "$work/$name.log" >&2
        exit 1
    }
}
record policy --policy "$assets/policies/serial.wasm" --policy-cache "$cache"
record native --serial native

# The functions of the binary itself (object names end in /wasmvisor),
# first-seen order, each once.
python3 - "$bin" "$work/policy.cg" "$work/native.cg" > "$out" <<'PY'
import re, sys

binary = sys.argv[1]
seen = []
known = set()
for path in sys.argv[2:]:
    objects, names = {}, {}
    current_ob = called_ob = None

    def ref(value, table):
        m = re.match(r"\((\d+)\)(?: (.*))?$", value)
        if not m:
            return value
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1))

    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("ob="):
            current_ob = ref(line[3:], objects)
        elif line.startswith("cob="):
            called_ob = ref(line[4:], objects)
        elif line.startswith(("fn=", "cfn=")):
            call = line.startswith("cfn=")
            name = ref(line[4:] if call else line[3:], names)
            ob = (called_ob or current_ob) if call else current_ob
            if call:
                called_ob = None
            if name and ob == binary and not name.startswith("0x") and name not in known:
                known.add(name)
                seen.append(name)
print("\n".join(seen))
PY
echo "$(wc -l < "$out") functions in $out"
