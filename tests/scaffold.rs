//! `wasmvisor policy new NAME --lang L`: in each of the four languages the
//! new policy builds with its own `build.sh` (the C, Python and JavaScript
//! tools from `make setup-langs`) and passes the conformance harness as it
//! is, under its new name.

use std::process::Command;

use wasmvisor_tests::*;

fn scaffold_builds_and_conforms(lang: &str, language: &str) {
    if !kvm_available() {
        return;
    }
    let dir = scratch(&format!("scaffold-{lang}"));
    let name = format!("door-audit-{lang}");
    let r = wasmvisor(&[
        "policy",
        "new",
        &name,
        "--lang",
        lang,
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let project = dir.join(&name);

    // Rust scaffolds share one target directory across test runs, so only
    // the first build compiles the SDK's dependencies.
    let built = Command::new(project.join("build.sh"))
        .env("CARGO_TARGET_DIR", root().join("target/scaffold"))
        .output()
        .expect("build.sh runs");
    assert!(
        built.status.success(),
        "{lang} scaffold does not build:\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let wasm = project.join(format!("{name}.wasm"));
    let wasm = wasm.to_str().unwrap();

    let r = wasmvisor(&["policy", "check", wasm]);
    assert_eq!(r.code, 0, "{r:?}");
    let info = format!(
        "ok     info: {name} 1.0.0: {name}: a policy started from the conformance policy ({language})"
    );
    assert!(r.stdout.contains(&info), "want `{info}` in:\n{}", r.stdout);

    let r = wasmvisor(&["policy", "conformance", wasm]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.ends_with("result: conforms\n"), "{}", r.stdout);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_new_rust_policy_builds_and_conforms() {
    scaffold_builds_and_conforms("rust", "Rust");
}

#[test]
fn a_new_c_policy_builds_and_conforms() {
    scaffold_builds_and_conforms("c", "C");
}

#[test]
fn a_new_python_policy_builds_and_conforms() {
    scaffold_builds_and_conforms("python", "Python");
}

#[test]
fn a_new_js_policy_builds_and_conforms() {
    scaffold_builds_and_conforms("js", "JavaScript");
}

#[test]
fn policy_new_refuses_bad_names_and_existing_directories() {
    let dir = scratch("scaffold-refuse");
    let d = dir.to_str().unwrap();
    let line =
        wasmvisor(&["policy", "new", "Bad_Name", "--lang", "c", "--dir", d]).one_error_line();
    assert!(line.contains("invalid policy name `Bad_Name`"), "{line}");
    assert_eq!(
        wasmvisor(&["policy", "new", "twice", "--lang", "c", "--dir", d]).code,
        0
    );
    let line = wasmvisor(&["policy", "new", "twice", "--lang", "c", "--dir", d]).one_error_line();
    assert!(line.contains("already exists"), "{line}");
}
