//! Helpers for the end-to-end tests: find the binary and the assets, gate
//! KVM tests, run the CLI and capture what a user would see.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
        .to_path_buf()
}

/// target/release/wasmvisor; panics with the command to build it.
pub fn bin() -> PathBuf {
    let p = root().join("target/release/wasmvisor");
    assert!(
        p.is_file(),
        "{} is missing: run `make build` before the end-to-end tests",
        p.display()
    );
    p
}

/// target/assets (guests, policies, fixtures, demo.toml).
pub fn assets() -> PathBuf {
    let p = root().join("target/assets");
    assert!(
        p.join("demo.toml").is_file(),
        "{} is missing: run `make assets` before the end-to-end tests",
        p.display()
    );
    p
}

/// A built guest image.
pub fn guest(name: &str) -> PathBuf {
    assets().join("guests").join(name)
}

/// A built policy component.
pub fn policy(name: &str) -> String {
    assets()
        .join("policies")
        .join(format!("{name}.wasm"))
        .display()
        .to_string()
}

/// Call at the top of every test that needs KVM. Without `/dev/kvm` the
/// test fails, unless `WASMVISOR_SKIP_KVM=1`, in which case it returns
/// false and the test must return early.
pub fn kvm_available() -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    if std::env::var("WASMVISOR_SKIP_KVM").as_deref() == Ok("1") {
        eprintln!("skipping: /dev/kvm is missing and WASMVISOR_SKIP_KVM=1");
        return false;
    }
    panic!(
        "/dev/kvm is missing: KVM tests fail without it (set WASMVISOR_SKIP_KVM=1 to skip them)"
    );
}

/// What one CLI run showed the user.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts the run failed with exactly one readable error line and no
    /// panic, and returns that line.
    pub fn one_error_line(&self) -> String {
        assert_ne!(self.code, 0, "expected a failure: {self:?}");
        assert!(
            !self.stderr.contains("panicked"),
            "host panicked: {}",
            self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one error line, got: {}",
            self.stderr
        );
        assert!(lines[0].starts_with("wasmvisor: error: "), "{}", lines[0]);
        lines[0].to_string()
    }
}

/// How long one CLI run may take before the test kills it: a guest that
/// waits for an interrupt that never comes would otherwise hang the test
/// run (the slowest run, booting a bzImage, takes about 100 s here).
pub const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Runs `wasmvisor ARGS...` to completion; fails the test if that takes
/// longer than [`RUN_LIMIT`].
pub fn wasmvisor(args: &[&str]) -> Run {
    wasmvisor_within(args, RUN_LIMIT).unwrap_or_else(|run| {
        panic!("wasmvisor {args:?} ran for more than {RUN_LIMIT:?} and was killed: {run:?}")
    })
}

/// Runs `wasmvisor ARGS...`, killing it after `limit`: `Err` holds what
/// a killed run had printed by then.
pub fn wasmvisor_within(args: &[&str], limit: Duration) -> Result<Run, Run> {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wasmvisor starts");
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wasmvisor can be waited for") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let run = Run {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned(),
    };
    match status {
        Some(_) => Ok(run),
        None => Err(run),
    }
}

/// Reads a pipe to its end on a thread of its own, so that neither of a
/// child's two pipes can fill up and stall it.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// A scratch directory unique to this test process and `name`.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wasmvisor-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Runs the flat 32-bit guest `file` with the native UART as console and
/// `extra` flags.
pub fn run_protected_guest(file: &str, extra: &[&str]) -> Run {
    let g = guest(file);
    let mut args = vec![
        "run",
        "--guest",
        g.to_str().unwrap(),
        "--mode",
        "protected",
        "--serial",
        "native",
    ];
    args.extend(extra);
    wasmvisor(&args)
}

/// Runs the conformance guest under the policy `spec`, with `extra` flags.
pub fn run_conformance_guest(spec: &str, extra: &[&str]) -> Run {
    let mut args = vec!["--policy", spec];
    args.extend(extra);
    run_protected_guest("conformance.bin", &args)
}

/// Every line of a JSON-lines file (`--events`, `--record`), parsed.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The events of `kind` in an `--events` file.
pub fn events_of(path: &Path, kind: &str) -> Vec<serde_json::Value> {
    json_lines(path)
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// The `schema` every `--events` line carries (`docs/events.md`).
pub const EVENT_SCHEMA: u64 = 2;

/// An event field holding an address or 64-bit value: a lowercase
/// `"0x…"` string (event schema 2). Panics on anything else, a JSON
/// number included, so a regression to schema 1's numbers is caught.
pub fn hex_field(v: &serde_json::Value) -> u64 {
    let text = v.as_str().unwrap_or_else(|| {
        panic!("{v} is not a \"0x…\" string (schema 2 writes addresses and 64-bit values as hex)")
    });
    let digits = text
        .strip_prefix("0x")
        .unwrap_or_else(|| panic!("{text:?} does not start with 0x"));
    assert!(
        !digits.is_empty() && !digits.bytes().any(|b| b.is_ascii_uppercase()),
        "{text:?} is not lowercase hex"
    );
    u64::from_str_radix(digits, 16).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// Asserts that every line of an `--events` file starts with
/// `"schema":2` and that there is at least one line.
pub fn assert_event_schema(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!text.is_empty(), "{} is empty", path.display());
    for line in text.lines() {
        assert!(
            line.starts_with(&format!("{{\"schema\":{EVENT_SCHEMA},")),
            "not a schema {EVENT_SCHEMA} line: {line}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_fields_parse() {
        assert_eq!(hex_field(&serde_json::json!("0x0")), 0);
        assert_eq!(
            hex_field(&serde_json::json!("0xffffffff81000000")),
            0xffff_ffff_8100_0000
        );
    }

    #[test]
    #[should_panic(expected = "is not a \"0x…\" string")]
    fn a_number_is_refused() {
        hex_field(&serde_json::json!(4096));
    }

    #[test]
    #[should_panic(expected = "lowercase")]
    fn upper_case_is_refused() {
        hex_field(&serde_json::json!("0xABC"));
    }
}
