# wasmvisor build entry points. Quick start: `make demo`, then `make test`.
CARGO   ?= cargo
ASSETS  := target/assets
WASM    := target/wasm32-wasip2/policy
POLICIES := serial msr-guard cpuid-mask io-tracer regbank noop
FIXTURES := other-world hostile

.PHONY: all setup guests policies assets build demo test lint unit e2e clean

all: build

## Install what a fresh machine lacks (rustup targets, binutils).
setup:
	bash scripts/setup.sh

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

## Guests, policies and the demo configuration in target/assets.
assets: guests policies
	cp examples/demo.toml $(ASSETS)/demo.toml

## The release binary at target/release/wasmvisor, plus its assets.
build: assets
	$(CARGO) build --release -p wasmvisor

## Set up a fresh machine and run the demo guest under the default policies.
demo: setup build
	target/release/wasmvisor run

## Formatting and lints, as CI enforces them.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target wasm32-wasip2 $(foreach p,$(POLICIES),-p $(p)-policy) -- -D warnings

## Unit, contract and end-to-end tests (KVM tests fail without /dev/kvm
## unless WASMVISOR_SKIP_KVM=1).
test: setup build lint
	$(CARGO) test --workspace

clean:
	$(CARGO) clean
