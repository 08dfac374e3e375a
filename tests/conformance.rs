//! The conformance policy (`docs/conformance.md`), built from Rust, C,
//! Python and JavaScript sources, each run against the conformance guest
//! on KVM: the guest checks every answer from inside the VM, the test
//! checks the guest's report, the emitted event and the config errors.

use wasmvisor_tests::*;

/// The checks the guest makes (docs/conformance.md, "What the guest checks").
const CHECKS: usize = 16;

/// One build of the conformance policy and the sandbox settings its
/// language's runtime needs.
struct Build {
    file: &'static str,
    language: &'static str,
    sandbox: &'static str,
}

const RUST: Build = Build {
    file: "conformance",
    language: "Rust",
    sandbox: "",
};

/// Runs the conformance guest under `build` with extra policy config.
fn run(build: &Build, config: &str, events: Option<&str>) -> Run {
    let mut spec = format!("{}:@grant=protect-memory", policy(build.file));
    for part in [build.sandbox, config] {
        if !part.is_empty() {
            spec.push(',');
            spec.push_str(part);
        }
    }
    let guest = guest("conformance.bin");
    let mut args = vec![
        "run",
        "--guest",
        guest.to_str().unwrap(),
        "--mode",
        "protected",
        "--mem",
        "64M",
        "--serial",
        "native",
        "--policy",
        &spec,
    ];
    if let Some(path) = events {
        args.extend(["--events", path]);
    }
    wasmvisor(&args)
}

/// The whole conformance check for one build.
fn conforms(build: &Build) {
    if !kvm_available() {
        return;
    }
    let dir = scratch(&format!("conformance-{}", build.file));
    let events = dir.join("events.jsonl");
    let r = run(build, "", Some(events.to_str().unwrap()));
    assert_eq!(r.code, 0, "{} build: {r:?}", build.language);
    let ok = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("conformance: ok "))
        .count();
    assert!(
        !r.stdout.contains("FAIL"),
        "{} build failed checks:\n{}",
        build.language,
        r.stdout
    );
    assert_eq!(ok, CHECKS, "{}: {}", build.language, r.stdout);
    assert!(
        r.stdout
            .contains(&format!("conformance: {CHECKS}/{CHECKS} checks passed")),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("handled 21, declined 0, faults 0"),
        "{}: {}",
        build.language,
        r.stderr
    );

    // Check 5's write, as the policy emitted it.
    let text = std::fs::read_to_string(&events).expect("events file");
    let emitted: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .filter(|e: &serde_json::Value| e["kind"] == "conformance")
        .collect();
    assert_eq!(emitted.len(), 1, "{text}");
    assert_eq!(emitted[0]["data"]["value"], 43981, "{text}");

    // The config errors of the spec: one line each, naming the key.
    for (config, words) in [
        ("key=zzz", &["key"][..]),
        ("colour=red", &["unknown config key", "colour"][..]),
    ] {
        let line = run(build, config, None).one_error_line();
        for w in words {
            assert!(line.contains(w), "{}: {config}: {line}", build.language);
        }
    }
}

#[test]
fn rust_build_conforms() {
    conforms(&RUST);
}

/// The guest notices a policy that strays from the spec: with another
/// key, exactly the two XOR checks fail, with what they got.
#[test]
fn guest_reports_a_policy_that_strays_from_the_spec() {
    if !kvm_available() {
        return;
    }
    let r = run(&RUST, "key=0x1", None);
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
