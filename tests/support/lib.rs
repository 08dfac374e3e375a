//! Helpers for the end-to-end tests: find the binary and the assets, gate
//! KVM tests, run the CLI and capture what a user would see.

#![forbid(unsafe_code)]

mod background;

pub use background::Background;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// false and the test must return early. [`require_kvm!`] does both.
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

/// The first statement of every test that needs KVM: without `/dev/kvm`
/// the test fails, unless `WASMVISOR_SKIP_KVM=1`, in which case it
/// returns early (see [`kvm_available`]).
#[macro_export]
macro_rules! require_kvm {
    () => {
        if !$crate::kvm_available() {
            return;
        }
    };
}

/// What one CLI run showed the user.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The `--events` file a [`Cmd::events`] run wrote.
    events_file: Option<PathBuf>,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            events_file: None,
        }
    }
}

impl Run {
    /// The `--events` file of a run built with [`Cmd::events`]; panics
    /// for any other run.
    pub fn events_file(&self) -> &Path {
        self.events_file
            .as_deref()
            .expect("this run was not asked for --events (use Cmd::events)")
    }

    /// Every event of a run built with [`Cmd::events`], parsed.
    pub fn events(&self) -> Vec<serde_json::Value> {
        json_lines(self.events_file())
    }

    /// The events of `kind` of a run built with [`Cmd::events`].
    pub fn events_of(&self, kind: &str) -> Vec<serde_json::Value> {
        events_of(self.events_file(), kind)
    }

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
        events_file: None,
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

/// A `wasmvisor run` command line under construction, run with
/// [`wasmvisor`] (so killed after [`RUN_LIMIT`]):
///
/// ```no_run
/// # use wasmvisor_tests::Cmd;
/// let r = Cmd::guest("hello.elf").policy("serial").expect_exit(0);
/// assert_eq!(r.stdout, "Hello from a wasmvisor guest!\n");
/// ```
///
/// Flags come in the order the methods are called, which is the order
/// the policies are loaded in.
#[derive(Clone, Debug)]
#[must_use = "a Cmd does nothing until it is run"]
pub struct Cmd {
    args: Vec<String>,
    events_file: Option<PathBuf>,
}

impl Default for Cmd {
    fn default() -> Cmd {
        Cmd::new()
    }
}

impl Cmd {
    /// `wasmvisor run` with no flags yet (on its own: the demo).
    pub fn new() -> Cmd {
        Cmd {
            args: vec!["run".into()],
            events_file: None,
        }
    }

    /// `wasmvisor run --guest GUEST`, for a guest built into
    /// target/assets/guests.
    pub fn guest(file: &str) -> Cmd {
        Cmd::new()
            .arg("--guest")
            .arg(asset(&format!("guests/{file}")))
    }

    /// `wasmvisor run --kernel PATH`.
    pub fn kernel(path: &Path) -> Cmd {
        Cmd::new().arg("--kernel").arg(path.display().to_string())
    }

    /// `--policy` with the bundled policy `name` (see [`policy`]).
    pub fn policy(self, name: &str) -> Cmd {
        self.arg("--policy")
            .arg(asset(&format!("policies/{name}.wasm")))
    }

    /// `--policy` with the bundled policy `name` and its `config`
    /// (`key=value,...`, `@` grants included).
    pub fn policy_with(self, name: &str, config: &str) -> Cmd {
        self.arg("--policy").arg(format!(
            "{}:{config}",
            asset(&format!("policies/{name}.wasm"))
        ))
    }

    /// `--mode MODE` (`real`, `protected`, `long`).
    pub fn mode(self, mode: &str) -> Cmd {
        self.arg("--mode").arg(mode)
    }

    /// `--vcpus N`.
    pub fn vcpus(self, n: u32) -> Cmd {
        self.arg("--vcpus").arg(n.to_string())
    }

    /// `--serial CONSOLE` (`native`, `none`).
    pub fn serial(self, console: &str) -> Cmd {
        self.arg("--serial").arg(console)
    }

    /// `--device SPEC`.
    pub fn device(self, spec: &str) -> Cmd {
        self.arg("--device").arg(spec)
    }

    /// One raw flag or value.
    pub fn arg(mut self, arg: impl AsRef<str>) -> Cmd {
        self.args.push(arg.as_ref().to_string());
        self
    }

    /// Raw flags and values.
    pub fn args<S: AsRef<str>>(self, args: impl IntoIterator<Item = S>) -> Cmd {
        args.into_iter().fold(self, Cmd::arg)
    }

    /// `--events FILE` to a fresh scratch file, which the run's
    /// [`Run::events`], [`Run::events_of`] and [`Run::events_file`] read.
    pub fn events(self) -> Cmd {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let file = scratch("events").join(format!("run-{n}.jsonl"));
        let mut cmd = self.arg("--events").arg(file.display().to_string());
        cmd.events_file = Some(file);
        cmd
    }

    /// The arguments `wasmvisor` is given, `run` first.
    pub fn get_args(&self) -> Vec<String> {
        self.args.clone()
    }

    /// The arguments, after checking that the assets they name are built
    /// (with [`assets`], which says how to build them).
    fn checked_args(&self) -> Vec<&str> {
        let built = asset("");
        if self.args.iter().any(|a| a.starts_with(&built)) {
            assets();
        }
        self.args.iter().map(String::as_str).collect()
    }

    /// Runs the command to completion; fails the test if that takes
    /// longer than [`RUN_LIMIT`].
    pub fn run(self) -> Run {
        let args = self.checked_args();
        let mut run = wasmvisor(&args);
        run.events_file = self.events_file;
        run
    }

    /// Runs the command, killing it after `limit`: `Err` holds what a
    /// killed run had printed by then (see [`wasmvisor_within`]).
    pub fn run_within(self, limit: Duration) -> Result<Run, Run> {
        let args = self.checked_args();
        let attach = |mut run: Run| {
            run.events_file = self.events_file.clone();
            run
        };
        wasmvisor_within(&args, limit).map(attach).map_err(attach)
    }

    /// Runs the command and asserts that it exited with `code`, showing
    /// the command line, stdout and stderr if not.
    pub fn expect_exit(self, code: i32) -> Run {
        let line = self.args.join(" ");
        let run = self.run();
        assert!(
            run.code == code,
            "wasmvisor {line}\nexited with {}, expected {code}\n--- stdout:\n{}\n--- stderr:\n{}",
            run.code,
            run.stdout,
            run.stderr
        );
        run
    }
}

/// The path of `rel` under target/assets, as an argument; unlike
/// [`assets`] it does not check that the assets are built, so that
/// [`Cmd`]'s arguments can be checked without them.
fn asset(rel: &str) -> String {
    root().join("target/assets").join(rel).display().to_string()
}

/// Asserts that `text` has each of `lines` as a whole line.
/// Asserts `text` contains each of `needles`, showing `text` when one is
/// missing (the pattern most end-to-end checks of output follow).
pub fn assert_contains<S: AsRef<str>>(text: &str, needles: &[S]) {
    for needle in needles {
        let needle = needle.as_ref();
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

/// Asserts `text` has each of `lines` as a whole line, showing `text` when
/// one is missing.
pub fn assert_has_lines<S: AsRef<str>>(text: &str, lines: &[S]) {
    for line in lines {
        let line = line.as_ref();
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
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
    fn a_cmd_assembles_its_arguments_in_order() {
        let assets = root().join("target/assets");
        let at = |rel: &str| assets.join(rel).display().to_string();
        let cmd = Cmd::guest("smp.bin")
            .mode("real")
            .vcpus(4)
            .policy("serial")
            .policy_with("io-tracer", "ports=0x3f8-0x3ff")
            .serial("native")
            .device("test")
            .arg("--stats")
            .args(["--mem", "16M"]);
        assert_eq!(
            cmd.get_args(),
            [
                "run".to_string(),
                "--guest".into(),
                at("guests/smp.bin"),
                "--mode".into(),
                "real".into(),
                "--vcpus".into(),
                "4".into(),
                "--policy".into(),
                at("policies/serial.wasm"),
                "--policy".into(),
                format!("{}:ports=0x3f8-0x3ff", at("policies/io-tracer.wasm")),
                "--serial".into(),
                "native".into(),
                "--device".into(),
                "test".into(),
                "--stats".into(),
                "--mem".into(),
                "16M".into(),
            ]
        );
        assert_eq!(Cmd::new().get_args(), ["run"]);
        assert_eq!(
            Cmd::kernel(Path::new("/k/vmlinux")).get_args(),
            ["run", "--kernel", "/k/vmlinux"]
        );
    }

    #[test]
    fn each_events_run_gets_a_file_of_its_own() {
        let a = Cmd::guest("hello.elf").events();
        let b = Cmd::guest("hello.elf").events();
        let (a, b) = (a.get_args(), b.get_args());
        assert_eq!(a[3], "--events");
        assert_eq!(b[3], "--events");
        assert_ne!(a[4], b[4]);
        assert!(a[4].ends_with(".jsonl"), "{}", a[4]);
    }

    #[test]
    #[should_panic(expected = "lowercase")]
    fn upper_case_is_refused() {
        hex_field(&serde_json::json!("0xABC"));
    }
}
