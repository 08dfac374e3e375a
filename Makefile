# wasmvisor build entry points. Quick start: `make demo`, then `make test`.
CARGO   ?= cargo
ASSETS  := target/assets
WASM    := target/wasm32-wasip2/policy
POLICIES := serial msr-guard cpuid-mask io-tracer regbank noop mem-guard syscall-tracer task-lister counter conformance pci-guard
FIXTURES := other-world hostile

.PHONY: all setup setup-langs guests policies lang-policies assets build demo test lint unit e2e bench clean fuzz-short kernel

all: build

## Install what a fresh machine lacks (rustup targets, binutils).
setup:
	bash scripts/setup.sh

## The C, Python and JavaScript policy toolchains (clang + wasi-libc,
## wit-bindgen, wasm-tools, componentize-py, jco), in ~/.cache/wasmvisor/langs.
setup-langs:
	bash scripts/setup-langs.sh

## Assemble the example guests from examples/guests.
guests:
	bash examples/guests/build.sh $(ASSETS)/guests

## Build every policy (and test fixture) as a wasm32-wasip2 component.
policies:
	$(CARGO) build --profile policy --target wasm32-wasip2 \
		$(foreach p,$(POLICIES),-p $(p)-policy) $(foreach f,$(FIXTURES),-p $(f)-fixture)
	mkdir -p $(ASSETS)/policies $(ASSETS)/fixtures
	for p in $(POLICIES); do cp $(WASM)/$$(echo $$p | tr - _)_policy.wasm $(ASSETS)/policies/$$p.wasm; done
	for f in $(FIXTURES); do cp $(WASM)/$$(echo $$f | tr - _)_fixture.wasm $(ASSETS)/fixtures/$$f.wasm; done

## The conformance policy built from its C, Python and JavaScript sources.
lang-policies: setup-langs
	bash scripts/build-lang-policies.sh $(ASSETS)/policies

## Guests, policies and the demo configuration in target/assets.
assets: guests policies
	cp examples/demo.toml $(ASSETS)/demo.toml

## The release binary at target/release/wasmvisor, plus its assets and the
## vfio-user test-device server (target/release/wasmvisor-vfio-user-testdev).
build: assets
	$(CARGO) build --release -p wasmvisor -p wasmvisor-vfio

## Set up a fresh machine and run the demo guest under the default policies.
demo: setup build
	target/release/wasmvisor run

## A stock Debian cloud kernel for the Linux boot tests (apt-get download,
## cached in ~/.cache/wasmvisor/kernels): target/assets/linux/vmlinuz.
kernel:
	bash scripts/fetch-kernel.sh $(ASSETS)/linux

## Formatting and lints, as CI enforces them.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target wasm32-wasip2 $(foreach p,$(POLICIES),-p $(p)-policy) -- -D warnings

## Unit, contract and end-to-end tests (KVM tests fail without /dev/kvm
## unless WASMVISOR_SKIP_KVM=1).
test: setup build lint kernel lang-policies
	$(CARGO) test --workspace
	$(MAKE) fuzz-short

## A short fuzz pass, as CI runs it: every cargo-fuzz target for 10 s
## (longer runs and their results: docs/fuzzing.md).
fuzz-short:
	bash scripts/fuzz.sh 10

## The benchmark suite (docs/performance.md): builds everything, installs
## QEMU for the start-up comparison if it is missing, and prints every
## result from one run (also written to target/bench/results.json).
## Extra options: make bench BENCH_ARGS="--quick" (see --help).
BENCH_ARGS ?=
bench: build
	@command -v qemu-system-x86_64 >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then S=""; else S="sudo"; fi; \
		$$S apt-get update -qq && $$S apt-get install -y -qq qemu-system-x86; } || \
		echo "bench: qemu-system-x86 could not be installed; the QEMU comparison is skipped" >&2
	$(CARGO) run --release -p wasmvisor-bench -- --json target/bench/results.json $(BENCH_ARGS)

clean:
	$(CARGO) clean
