#!/usr/bin/env bash
# The hardware acceptance run (docs/hardware.md): boots the Debian cloud
# kernel with a busybox initramfs (scripts/make-initramfs.sh) to its
# userland under four introspection policies, and checks what they saw.
# Only a host with hardware virtualization (VT-x or AMD-V, kvm_intel or
# kvm_amd) can run guest user code; elsewhere the script stops at once.
#
#   scripts/hw-acceptance.sh          (after `make build kernel`; it runs
#                                      them itself if anything is missing)
#
# Exit codes:
#   0  every check passed
#   1  a check failed
#   2  usage or setup error (no access to /dev/kvm, build or initramfs failed)
#   3  not a hardware-virtualization host: one line on stderr,
#      "hw-acceptance: skipped: REASON", and nothing else is done
#
# Everything it writes goes under target/hw-acceptance/: the initramfs,
# console.log (the guest's console), wasmvisor.stderr, events.jsonl and
# checks.txt. WASMVISOR_HW_TIMEOUT (seconds, default 300) bounds the run.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--help]" >&2; exit 2 ;;
esac

skip() {
    echo "hw-acceptance: skipped: $*" >&2
    exit 3
}

# Can this host run guest user code? Decided before anything is built.
[ -e /dev/kvm ] || skip "/dev/kvm is missing: this host has no KVM; run this on a VT-x or AMD-V host"
if [ -d /sys/module/kvm_pvm ]; then
    skip "this host's KVM is a software backend (kvm_pvm): guest user code cannot run; run this on a VT-x or AMD-V host"
fi
grep -qwE 'vmx|svm' /proc/cpuinfo ||
    skip "the CPU shows neither vmx nor svm in /proc/cpuinfo: no hardware virtualization; run this on a VT-x or AMD-V host"
[ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ] ||
    skip "neither kvm_intel nor kvm_amd is loaded: /dev/kvm is not backed by VT-x or AMD-V (modprobe kvm_intel or kvm_amd)"

setup_error() {
    echo "hw-acceptance: error: $*" >&2
    exit 2
}
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    setup_error "cannot open /dev/kvm: run as root or as a member of the kvm group"
fi

cd "$(dirname "$0")/.."
out=target/hw-acceptance
bin=target/release/wasmvisor
kernel=target/assets/linux/vmlinuz
policies=target/assets/policies
marker="wasmvisor-acceptance"
trigger="$marker: ready"

targets=()
[ -x "$bin" ] || targets+=(build)
for p in linux-tasks syscall-guard syscall-tracer linux-info; do
    [ -f "$policies/$p.wasm" ] || { targets+=(build); break; }
done
if [ ! -s "$kernel" ] || [ ! -s target/assets/linux/version ]; then
    targets+=(kernel)
fi
if [ "${#targets[@]}" -gt 0 ]; then
    echo "hw-acceptance: make $(printf '%s\n' "${targets[@]}" | sort -u | tr '\n' ' ')" >&2
    # shellcheck disable=SC2046 # one word per target
    make $(printf '%s\n' "${targets[@]}" | sort -u) >&2 || setup_error "make failed"
fi
for f in "$bin" "$kernel" target/assets/linux/version \
         "$policies"/{linux-tasks,syscall-guard,syscall-tracer,linux-info}.wasm; do
    [ -e "$f" ] || setup_error "$f is missing after make build kernel"
done

rm -rf "$out"
mkdir -p "$out"
bash scripts/make-initramfs.sh "$out/initramfs.cpio.gz" >&2 || setup_error "scripts/make-initramfs.sh failed"

limit="${WASMVISOR_HW_TIMEOUT:-300}"
echo "hw-acceptance: booting $(cat target/assets/linux/version) with the initramfs (at most ${limit} s)" >&2
rc=0
timeout "$limit" "$bin" run \
    --kernel "$kernel" \
    --initrd "$out/initramfs.cpio.gz" \
    --cmdline "console=ttyS0 reboot=k panic=1 rdinit=/init quiet" \
    --mem 512M --vcpus 1 \
    --policy "$policies/linux-tasks.wasm:at=$trigger" \
    --policy "$policies/syscall-guard.wasm:at=$trigger,@grant=protect-memory" \
    --policy "$policies/syscall-tracer.wasm:names=linux,@grant=debug" \
    --policy "$policies/linux-info.wasm:at=$trigger" \
    --events "$out/events.jsonl" \
    </dev/null >"$out/console.log" 2>"$out/wasmvisor.stderr" || rc=$?

# One line per check, "ok   WHAT" or "FAIL WHAT: WHY".
python3 - "$rc" "$limit" "$out" "$(cat target/assets/linux/version)" "$marker" \
    >"$out/checks.txt" <<'EOF' || echo "FAIL the checks ran: python3 exited $?" >>"$out/checks.txt"
import json, sys

rc, limit, out, release, marker = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]

def check(ok, what, why=""):
    print(("ok   " + what) if ok else ("FAIL %s: %s" % (what, why)))

def read(name):
    try:
        with open("%s/%s" % (out, name), errors="replace") as f:
            return f.read()
    except OSError:
        return ""

stderr = read("wasmvisor.stderr")
console = read("console.log")
events, bad = [], 0
for line in read("events.jsonl").splitlines():
    try:
        events.append(json.loads(line))
    except ValueError:
        bad += 1
def of(kind):
    return [e.get("data") or {} for e in events if e.get("kind") == kind]
last_err = (stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]

if rc == 124:
    why = "timed out after %s s" % limit
else:
    why = "exit code %d; %s" % (rc, last_err)
check(rc == 0 and "the guest reset the machine" in stderr,
      "wasmvisor exits 0 after the guest resets the machine", why)
check(marker + ": done" in console, "the console shows \"%s: done\"" % marker,
      "last console line: %r" % ((console.strip().splitlines() or [""])[-1]))
check(bad == 0 and events, "events.jsonl holds JSON lines",
      "%d events, %d lines that are not JSON" % (len(events), bad))

info = of("linux-info")
got = info[-1].get("release") if info else None
check(got == release, "linux-info's release is %s" % release,
      "no linux-info event" if not info else "it reported %r" % got)

tasks = of("linux-task")
init = [t for t in tasks if t.get("pid") == 1]
check(any(t.get("comm") in ("init", "sh") for t in init),
      "linux-tasks lists pid 1 as init or sh",
      "%d tasks; pid 1: %s" % (len(tasks), [t.get("comm") for t in init] or "absent"))
check(any(t.get("comm") == "sleep" for t in tasks), "linux-tasks lists a sleep task",
      "%d tasks: %s" % (len(tasks), sorted({str(t.get("comm")) for t in tasks})[:20]))

names = {e.get("name") for e in of("syscall")}
for name in ("execve", "openat", "write"):
    check(name in names, "syscall-tracer saw %s" % name,
          "%d syscall names seen: %s" % (len(names), sorted(str(n) for n in names)[:20]))

table = of("syscall-table")
t = table[-1] if table else {}
hooked = len(of("syscall-hooked"))
check(table and t.get("hooked") == 0 and hooked == 0, "syscall-guard found no hooked entry",
      "no syscall-table event" if not table else
      "hooked %r, %d syscall-hooked events" % (t.get("hooked"), hooked))
entries = t.get("entries")
check(isinstance(entries, int) and entries > 300, "syscall-guard's table has more than 300 entries",
      "no syscall-table event" if not table else "entries %r" % entries)
EOF
cat "$out/checks.txt"

passed="$(grep -c '^ok ' "$out/checks.txt" || true)"
failed="$(grep -c '^FAIL ' "$out/checks.txt" || true)"
echo "hw-acceptance: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
