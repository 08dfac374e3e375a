//! The policy author's tools: `wasmvisor policy check` (no VM) and the
//! conformance harness `wasmvisor policy conformance` (on KVM).

use wasmvisor_tests::*;

#[test]
fn check_passes_a_good_policy_and_says_which_grants_it_needs() {
    let r = wasmvisor(&["policy", "check", &policy("conformance")]);
    assert_eq!(r.code, 0, "{r:?}");
    for line in [
        "ok     exports wasmvisor:policy/handler@0.1.0",
        "ok     exports wasmvisor:policy/quick-handler@0.1.0: exits are answered through the list-free handle-exit-quick",
        "ok     imports wasmvisor:policy/host@0.1.0",
        "ok     info: conformance 1.0.0: conformance policy (Rust)",
        "ok     init accepts the config []",
        "  ports:        0x520-0x523",
        "note   asks for protect-memory: run it as --policy",
        "result: ok; the policy loads",
    ] {
        assert!(
            r.stdout.contains(line),
            "missing `{line}` in:\n{}",
            r.stdout
        );
    }
}

#[test]
fn check_names_what_is_wrong() {
    let dir = scratch("check");
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{}", assets().join("fixtures/other-world.wasm").display()),
            "error  does not export wasmvisor:policy/handler@0.1.0: not a policy (its exports: run)",
        ),
        (
            format!("{}:key=zz", policy("conformance")),
            "error  init with [key=zz]: policy conformance.wasm rejected its configuration: config key `key`: `zz` is not a number",
        ),
        (
            {
                let p = dir.join("core.wasm");
                // An empty core module: magic, version 1, layer 0.
                std::fs::write(&p, b"\0asm\x01\0\0\0").unwrap();
                p.display().to_string()
            },
            "is a core Wasm module",
        ),
        (
            {
                let p = dir.join("text.wasm");
                std::fs::write(&p, b"not wasm at all").unwrap();
                p.display().to_string()
            },
            "error  ",
        ),
    ];
    for (arg, want) in cases {
        let r = wasmvisor(&["policy", "check", &arg]);
        assert_eq!(r.code, 1, "{arg}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert!(
            r.stdout.contains(want),
            "{arg}: want `{want}` in:\n{}",
            r.stdout
        );
        assert_contains(&r.stdout, &["the policy would not load"]);
    }
}

#[test]
fn the_conformance_harness_passes_the_reference_and_fails_a_stray_config() {
    require_kvm!();
    let r = wasmvisor(&["policy", "conformance", &policy("conformance")]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_contains(&r.stdout, &["ok     the guest's checks: 16/16 passed"]);
    assert!(r.stdout.ends_with("result: conforms\n"), "{}", r.stdout);

    // The same policy with another key strays from the spec.
    let stray = format!("{}:key=1", policy("conformance"));
    let r = wasmvisor(&["policy", "conformance", &stray]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_contains(
        &r.stdout,
        &[
            "guest  FAIL 2 port-xor-key",
            "FAIL   the guest's checks: 14/16 passed",
        ],
    );
}

/// A component built before the kernel-* host imports were added still
/// passes `policy check` and runs a guest: additions within 0.1.x do not
/// break what users built earlier (tests/prebuilt/README.md).
#[test]
fn a_component_built_before_the_kernel_imports_still_loads_and_runs() {
    let old = root().join("tests/prebuilt/serial-before-kernel-imports.wasm");
    let old = old.to_str().unwrap();
    let r = wasmvisor(&["policy", "check", old]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_contains(
        &r.stdout,
        &[
            "note   does not export wasmvisor:policy/quick-handler@0.1.0: exits are answered through handle-exit",
            "result: ok; the policy loads",
        ],
    );
    require_kvm!();
    let g = guest("hello.elf");
    let r = wasmvisor(&["run", "--guest", g.to_str().unwrap(), "--policy", old]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "Hello from a wasmvisor guest!\n");
    assert!(
        r.stderr
            .contains("policy serial-before-kernel-imports: handled "),
        "the old component answered the console: {}",
        r.stderr
    );
}
