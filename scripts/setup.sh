#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test wasmvisor:
# the wasm32-wasip2 Rust target, binutils (the guests' assembler), lz4
# (to unpack the test kernel's vmlinux from its bzImage) and gdb (the
# `run --gdb` tests drive it).
set -euo pipefail

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

missing=()
for tool in as ld objcopy; do
  command -v "$tool" >/dev/null 2>&1 || missing+=(binutils)
done
command -v lz4 >/dev/null 2>&1 || missing+=(lz4)
command -v gdb >/dev/null 2>&1 || missing+=(gdb)
# containerd and ctr (Debian's containerd ships both): tests/containerd.rs
# runs VMs through the containerd shim (docs/containerd.md).
command -v containerd >/dev/null 2>&1 && command -v ctr >/dev/null 2>&1 || missing+=(containerd)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  # shellcheck disable=SC2046 # one word per package
  $SUDO apt-get install -y -qq $(printf '%s\n' "${missing[@]}" | sort -u)
fi
if [ ! -e /dev/kvm ]; then
  echo "setup: warning: /dev/kvm is missing; KVM tests will fail (set WASMVISOR_SKIP_KVM=1 to skip them)" >&2
fi
