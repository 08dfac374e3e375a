# wasmvisor build entry points. Quick start: `make demo`, then `make test`.
CARGO   ?= cargo
ASSETS  := target/assets
WASM    := target/wasm32-wasip2/policy
POLICIES := serial msr-guard cpuid-mask io-tracer regbank noop mem-guard syscall-tracer task-lister counter conformance pci-guard template linux-info linux-tasks syscall-guard fuzzer
FIXTURES := other-world hostile

.PHONY: all setup setup-langs guests policies lang-policies assets build demo test lint clippy unit e2e bench clean fuzz fuzz-replay kernel drgn

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
## Every binary of the workspace builds, with features resolved over every
## member, so that the dependencies match the test build's and `make test`
## compiles wasmtime once (docs/ci.md).
build: assets
	$(CARGO) build --release --workspace --bins

## Set up a fresh machine and run the demo guest under the default policies.
demo: setup build
	target/release/wasmvisor run

## A stock Debian cloud kernel for the Linux boot tests (apt-get download,
## cached in ~/.cache/wasmvisor/kernels): target/assets/linux/vmlinuz.
kernel:
	bash scripts/fetch-kernel.sh $(ASSETS)/linux

## drgn from PyPI in ~/.cache/wasmvisor/drgn-venv, which the dump tests
## drive against `wasmvisor vm dump` cores.
drgn:
	bash scripts/setup-drgn.sh

## Formatting and lints, as CI enforces them.
lint:
	$(CARGO) fmt --all --check
	$(MAKE) --no-print-directory clippy

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target wasm32-wasip2 $(foreach p,$(POLICIES),-p $(p)-policy) -- -D warnings

## Everything, as CI runs it: setup, build, lints, unit, contract and
## end-to-end tests and the fuzz replay, each phase timed
## (scripts/test.sh, docs/ci.md). KVM tests fail without /dev/kvm unless
## WASMVISOR_SKIP_KVM=1.
test:
	bash scripts/test.sh

## The fast loop, under a minute on a warm build: unit tests and the fuzz
## replay, none of which needs KVM. The dispatcher's tests run the policy
## fixture, so the policy components are built first.
unit: policies
	$(CARGO) test --release --workspace --lib --bins --test fuzz_replay

## The integration and end-to-end tests alone (after `make build kernel drgn
## lang-policies`). Every cargo command here names --workspace: selecting
## one package (-p) resolves features differently and recompiles wasmtime.
e2e:
	$(CARGO) test --release --workspace --test '*'

## The fuzz pass of `make test`: every target's seeds and a fixed set of
## mutations, in the ordinary build (fuzz/tests/fuzz_replay.rs).
fuzz-replay:
	$(CARGO) test --release --workspace --test fuzz_replay

## Coverage-guided fuzzing under libFuzzer, instrumented: every target for
## FUZZ_SECS seconds (results: docs/fuzzing.md).
FUZZ_SECS ?= 60
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECS)

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
	target/release/wasmvisor-bench --json target/bench/results.json $(BENCH_ARGS)

clean:
	$(CARGO) clean
