//! `wasmvisor policy new NAME --lang L`: in each of the four languages the
//! new policy built from the conformance template builds with its own
//! `build.sh` (the C, Python and JavaScript tools from `make setup-langs`)
//! and passes the conformance harness as it is, under its new name; the
//! minimal Rust template, created outside the checkout, passes its own
//! unit test, builds and passes `policy check`. Every project is created
//! in a scratch folder under the system's temporary directory, outside
//! the checkout.

use std::process::Command;

use wasmvisor_tests::*;

/// Runs the project's build.sh. Rust scaffolds share one target directory
/// across test runs, so only the first build compiles the SDK's
/// dependencies.
fn build(project: &std::path::Path) {
    let built = Command::new(project.join("build.sh"))
        .env("CARGO_TARGET_DIR", root().join("target/scaffold"))
        .output()
        .expect("build.sh runs");
    assert!(
        built.status.success(),
        "{} does not build:\n{}{}",
        project.display(),
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
}

fn scaffold_builds_and_conforms(lang: &str, language: &str) {
    require_kvm!();
    let dir = scratch(&format!("scaffold-{lang}"));
    let name = format!("door-audit-{lang}");
    let r = wasmvisor(&[
        "policy",
        "new",
        &name,
        "--lang",
        lang,
        "--from",
        "conformance",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let project = dir.join(&name);

    build(&project);
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

/// `cargo` in `dir`, with the scaffolds' shared target directory.
fn cargo(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("cargo")
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", root().join("target/scaffold"))
        .output()
        .expect("cargo runs")
}

#[test]
fn the_minimal_rust_policy_tests_builds_and_checks_outside_the_checkout() {
    let dir = scratch("scaffold-minimal");
    assert!(
        !dir.starts_with(root()),
        "{} is inside the checkout",
        dir.display()
    );
    let r = wasmvisor(&[
        "policy",
        "new",
        "port-answer",
        "--lang",
        "rust",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let project = dir.join("port-answer");
    let toml = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    let sdk = toml
        .lines()
        .find_map(|l| l.strip_prefix("wasmvisor-policy-sdk = { path = \""))
        .expect("the SDK dependency");
    assert!(sdk.starts_with(".."), "the SDK path is relative: {sdk}");
    let lib = std::fs::read_to_string(project.join("src/lib.rs")).unwrap();
    let policy_lines = lib
        .lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .count();
    assert!(policy_lines <= 50, "{policy_lines} lines before the tests");

    let tested = cargo(&project, &["test", "--quiet"]);
    let out = String::from_utf8_lossy(&tested.stdout);
    assert!(
        tested.status.success() && out.contains("1 passed"),
        "cargo test in the new project:\n{out}{}",
        String::from_utf8_lossy(&tested.stderr)
    );
    build(&project);
    let wasm = project.join("port-answer.wasm");
    let r = wasmvisor(&[
        "policy",
        "check",
        &format!("{}:port=0x80,value=7", wasm.display()),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("ok     info: port-answer 0.1.0: answers one I/O port"),
        "{}",
        r.stdout
    );
    let line = wasmvisor(&["policy", "check", &format!("{}:prot=1", wasm.display())]);
    assert_ne!(line.code, 0, "a typo in the config is refused: {line:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_minimal_template_is_rust_only() {
    let dir = scratch("scaffold-minimal-c");
    let line = wasmvisor(&[
        "policy",
        "new",
        "x",
        "--lang",
        "c",
        "--from",
        "minimal",
        "--dir",
        dir.to_str().unwrap(),
    ])
    .one_error_line();
    assert_contains(&line, &["the minimal template is Rust only"]);
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
    assert_contains(&line, &["invalid policy name `Bad_Name`"]);
    assert_eq!(
        wasmvisor(&["policy", "new", "twice", "--lang", "c", "--dir", d]).code,
        0
    );
    let line = wasmvisor(&["policy", "new", "twice", "--lang", "c", "--dir", d]).one_error_line();
    assert_contains(&line, &["already exists"]);
}
