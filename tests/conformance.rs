//! The conformance policy (`docs/conformance.md`), built from Rust, C,
//! Python and JavaScript sources (`make lang-policies` builds the last
//! three), each put through the conformance harness on KVM: the guest
//! checks every answer from inside the VM, the harness checks the guest's
//! report, the emitted event, the exit count and the config errors.

use wasmvisor_tests::*;

/// Runs the harness on `target/assets/policies/FILE.wasm` and checks its
/// identity through `policy check`.
fn conforms(file: &str, language: &str) {
    require_kvm!();
    let path = assets().join("policies").join(format!("{file}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `make lang-policies` (scripts/build-lang-policies.sh) first",
        path.display()
    );
    let path = path.display().to_string();
    let r = wasmvisor(&["policy", "conformance", &path]);
    assert_eq!(
        r.code, 0,
        "the {language} build does not conform:\n{}{}",
        r.stdout, r.stderr
    );
    assert_contains(&r.stdout, &["ok     the guest's checks: 16/16 passed"]);
    assert!(r.stdout.ends_with("result: conforms\n"), "{}", r.stdout);

    let r = wasmvisor(&["policy", "check", &path]);
    assert_eq!(r.code, 0, "{r:?}");
    let info = format!("ok     info: conformance 1.0.0: conformance policy ({language})");
    assert!(r.stdout.contains(&info), "want `{info}` in:\n{}", r.stdout);
}

#[test]
fn rust_build_conforms() {
    conforms("conformance", "Rust");
}

#[test]
fn c_build_conforms() {
    conforms("conformance-c", "C");
}

#[test]
fn python_build_conforms() {
    conforms("conformance-py", "Python");
}

#[test]
fn javascript_build_conforms() {
    conforms("conformance-js", "JavaScript");
}

/// The guest notices a policy that strays from the spec: with another
/// key, exactly the two XOR checks fail, with what they got.
#[test]
fn the_guest_reports_a_policy_that_strays_from_the_spec() {
    require_kvm!();
    let spec = format!("{}:@grant=protect-memory,key=0x1", policy("conformance"));
    let r = run_conformance_guest(&spec, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let failed: Vec<&str> = r.stdout.lines().filter(|l| l.contains("FAIL")).collect();
    assert_eq!(
        failed,
        [
            "conformance: FAIL 2 port-xor-key got 0000000011223345 want 000000004b78691e",
            "conformance: FAIL 3 port-read-cut got 0000000000000045 want 000000000000001e",
        ],
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("conformance: 14/16 checks passed"));
}
