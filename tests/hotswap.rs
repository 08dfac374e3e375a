//! Hot swap, end to end: the ticker guest on real KVM writes a sequence
//! number per vCPU to port 0x500 and reads back how many the counter
//! policy has accepted, while policies are swapped through the control
//! socket (`wasmvisor run --control`, `wasmvisor policy ...`) and `--watch`.
//!
//! The counter policy stops the VM dirty on any number out of order, the
//! guest reports any count it did not expect, and every generation writes
//! the range of numbers it accepted when it hands its state over: so a
//! lost, repeated or misattributed exit fails these tests.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasmvisor_tests::{
    assert_contains, assets, bin, guest, policy, require_kvm, scratch, wasmvisor,
};
use wasmvisor_vmm::control::ControlClient;

/// A VM running in the background, killed if the test fails first.
struct Vm {
    child: Option<Child>,
    control: PathBuf,
    events: PathBuf,
    stderr: PathBuf,
}

impl Vm {
    /// Starts the ticker guest on `vcpus` vCPUs under `policies`, with a
    /// control socket and an events file in `dir`, plus `extra` flags.
    fn start(dir: &Path, vcpus: u32, policies: &[String], extra: &[&str]) -> Vm {
        let control = dir.join("ctl");
        let events = dir.join("events.jsonl");
        let stderr = dir.join("stderr.txt");
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("--guest")
            .arg(guest("ticker.bin"))
            .arg("--vcpus")
            .arg(vcpus.to_string())
            .arg("--control")
            .arg(&control)
            .arg("--events")
            .arg(&events)
            .args(extra);
        for p in policies {
            cmd.arg("--policy").arg(p);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("wasmvisor starts");
        let vm = Vm {
            child: Some(child),
            control,
            events,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !vm.control.exists() {
            assert!(
                Instant::now() < deadline,
                "no control socket after 20 s: {}",
                vm.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        vm
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn connect(&self) -> Client {
        Client::connect(&self.control, &self.stderr)
    }

    /// Waits for the VM to end; returns its exit code and stderr.
    fn wait(&mut self) -> (i32, String) {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status.code().unwrap_or(-1), self.stderr());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the VM did not end within 30 s: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Parsed events of one kind.
    fn events(&self, kind: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("events are JSON"))
            .filter(|e| e["kind"] == kind)
            .map(|e| e["data"].clone())
            .collect()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One control connection, whose replies the tests read as JSON values.
struct Client {
    inner: ControlClient,
    /// The VM's stderr, to explain a connection that ended early.
    vm_stderr: PathBuf,
}

impl Client {
    fn connect(path: &Path, vm_stderr: &Path) -> Client {
        Client {
            inner: ControlClient::connect(path, Duration::from_secs(60))
                .expect("connect to the control socket"),
            vm_stderr: vm_stderr.to_path_buf(),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.inner.send_raw(bytes).expect("send");
    }

    /// The next reply line, or `None` once the server closed.
    fn reply(&mut self) -> Option<Value> {
        let line = self.inner.read_line().expect("a reply or the end");
        line.map(|l| serde_json::from_str(&l).expect("replies are JSON"))
    }

    fn request(&mut self, req: Value) -> Value {
        match self.inner.request_line(&req) {
            Ok(line) => serde_json::from_str(&line).expect("replies are JSON"),
            Err(e) => panic!(
                "no reply to {req}: {e}: {}",
                std::fs::read_to_string(&self.vm_stderr).unwrap_or_default()
            ),
        }
    }

    fn swap(&mut self, name: &str, spec: &str) -> Value {
        self.request(json!({"op": "swap", "name": name, "policy": spec}))
    }
}

fn counter(generation: u64, extra: &str) -> String {
    format!(
        "{}:generation={generation},@grant=stop-vm{extra}",
        policy("counter")
    )
}

/// Checks the `generation` summaries of one run: per vCPU, generations
/// in order, each starting where the previous one stopped, counts adding
/// up. Returns, per vCPU, the generations that accepted at least one
/// number.
fn check_generations(events: &[Value], vcpus: u64, generations: u64) -> Vec<usize> {
    let mut busy = Vec::new();
    for vcpu in 0..vcpus {
        let mine: Vec<&Value> = events.iter().filter(|e| e["vcpu"] == vcpu).collect();
        let gens: Vec<u64> = mine
            .iter()
            .map(|e| e["generation"].as_u64().unwrap())
            .collect();
        assert_eq!(
            gens,
            (0..generations).collect::<Vec<_>>(),
            "vCPU {vcpu}: every generation hands over exactly once, in order"
        );
        let mut count = 0;
        let mut active = 0;
        for e in &mine {
            let handled = e["handled"].as_u64().unwrap();
            if handled > 0 {
                assert_eq!(
                    e["first"].as_u64(),
                    Some(count),
                    "vCPU {vcpu}: {e} starts where the previous generation stopped"
                );
                assert_eq!(e["last"].as_u64(), Some(count + handled - 1), "{e}");
                active += 1;
            } else {
                assert!(e["first"].is_null(), "{e}");
            }
            count += handled;
            assert_eq!(
                e["count"].as_u64(),
                Some(count),
                "vCPU {vcpu}: the count travels across the swap: {e}"
            );
        }
        busy.push(active);
    }
    busy
}

#[test]
fn a_hundred_swaps_lose_and_repeat_no_exit() {
    require_kvm!();
    let dir = scratch("hundred");
    let mut vm = Vm::start(&dir, 2, &[counter(0, "")], &[]);
    let mut c = vm.connect();
    let mut switch_us = Vec::new();
    for g in 1..=100 {
        let r = c.swap("counter", &counter(g, ""));
        assert_eq!(r["ok"], true, "swap {g}: {r}");
        assert_eq!(r["generation"], g + 1, "{r}");
        assert_eq!(r["change"]["vcpus"], 2, "{r}");
        switch_us.push(r["change"]["switch_us"].as_u64().unwrap());
    }
    // The last generation stops the VM cleanly at its first number, so the
    // run ends with every generation's summary written.
    let last = wasmvisor(&[
        "policy",
        "swap",
        "--control",
        vm.control.to_str().unwrap(),
        "counter",
        &counter(101, ",stop=true"),
    ]);
    assert_eq!(last.code, 0, "{last:?}");
    assert!(
        last.stdout.contains("generation 102: counter active on"),
        "{last:?}"
    );
    let (code, stderr) = vm.wait();
    let events = vm.events("generation");
    let mismatches = vm.events("mismatch").len() + vm.events("guest-mismatch").len();
    assert_eq!(code, 0, "{stderr}");
    assert_contains(
        &stderr,
        &["stopped by policy counter (clean): counter: stop requested"],
    );
    assert_eq!(mismatches, 0);
    // Summaries of generations 0..=100 come at their handoff; 101 at its
    // stop, on the vCPU that stopped (the other is stopped mid-run).
    let handed: Vec<Value> = events
        .iter()
        .filter(|e| e["generation"].as_u64() < Some(101))
        .cloned()
        .collect();
    let busy = check_generations(&handed, 2, 101);
    // The guest kept running through the swaps on both vCPUs. How many
    // generations see exits depends on scheduling: swaps come back to
    // back, so on a loaded host several can pass before a vCPU thread
    // runs (43 to 58 of 101 per vCPU here at load average 3).
    assert!(busy.iter().all(|&b| b >= 10), "busy generations: {busy:?}");
    switch_us.sort_unstable();
    eprintln!(
        "switch latency over 100 swaps: median {} us, max {} us; generations with exits per vCPU: {busy:?}",
        switch_us[50], switch_us[99]
    );
}

#[test]
fn state_handoff_keeps_the_count() {
    require_kvm!();
    let dir = scratch("handoff");
    let mut vm = Vm::start(&dir, 1, &[counter(0, "")], &[]);
    let mut c = vm.connect();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.swap("counter", &counter(1, ""))["ok"], true);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.swap("counter", &counter(2, ",stop=true"))["ok"], true);
    let (code, stderr) = vm.wait();
    let events = vm.events("generation");
    assert_eq!(code, 0, "{stderr}");
    check_generations(&events, 1, 3);
    // Both generations that ran for 200 ms took numbers, and the second
    // went on from the first's count instead of from zero.
    assert!(events[0]["handled"].as_u64() > Some(0), "{events:?}");
    assert!(events[1]["first"].as_u64() > Some(0), "{events:?}");
}

#[test]
fn broken_components_are_refused_while_the_old_policy_serves() {
    require_kvm!();
    let dir = scratch("broken");
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x0d\0\x01\0this is not a component").unwrap();
    let fixture = |name: &str| assets().join("fixtures").join(format!("{name}.wasm"));
    let mut vm = Vm::start(&dir, 2, &[counter(0, "")], &[]);
    let mut c = vm.connect();
    let refused = [
        (garbage.display().to_string(), "does not compile"),
        (
            fixture("other-world").display().to_string(),
            "does not export wasmvisor:policy/handler@0.1.0",
        ),
        (
            format!("{}:panic=1", fixture("hostile").display()),
            "failed in init: the policy trapped",
        ),
        (
            format!("{}:spin=1,@deadline=5ms", fixture("hostile").display()),
            "failed in init: the policy ran past its deadline",
        ),
        (
            "/nonexistent/p.wasm".to_string(),
            "cannot read policy /nonexistent/p.wasm",
        ),
    ];
    for (spec, why) in &refused {
        let r = c.swap("counter", spec);
        assert_eq!(r["ok"], false, "{spec}: {r}");
        let error = r["error"].as_str().unwrap();
        assert!(error.contains(why), "{spec}: expected `{why}` in `{error}`");
        assert!(!error.contains('\n'), "{error}");
    }
    // CPUID is fixed after the first KVM_RUN: a policy that would change
    // it is refused, whether loaded or swapped in.
    let cpuid = format!("{}:vendor=WasmvisorCPU", policy("cpuid-mask"));
    let r = c.request(json!({"op": "load", "policy": cpuid}));
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("CPUID cannot change after the first KVM_RUN"),
        "{r}"
    );
    let r = c.request(json!({"op": "unload", "name": "nosuch"}));
    assert_eq!(r["error"], "no policy named `nosuch` is loaded", "{r}");
    // Still generation 1, still the counter, and it kept counting.
    let r = c.request(json!({"op": "list"}));
    assert_eq!(r["generation"], 1, "{r}");
    assert_eq!(r["policies"][0]["name"], "counter", "{r}");
    assert_eq!(r["policies"][0]["generation"], 1, "{r}");
    assert_eq!(c.swap("counter", &counter(1, ",stop=true"))["ok"], true);
    let (code, stderr) = vm.wait();
    let events = vm.events("generation");
    assert_eq!(code, 0, "{stderr}");
    let handed: Vec<Value> = events
        .into_iter()
        .filter(|e| e["generation"] == 0)
        .collect();
    check_generations(&handed, 2, 1);
}

#[test]
fn load_and_unload_change_the_chain() {
    require_kvm!();
    let dir = scratch("load");
    let mut vm = Vm::start(&dir, 1, &[counter(0, "")], &[]);
    let mut c = vm.connect();
    let tracer = format!("{}:ports=0x80", policy("io-tracer"));
    let r = c.request(json!({"op": "load", "policy": tracer, "id": 5}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["id"], 5, "{r}");
    assert_eq!(r["change"]["name"], "io-tracer", "{r}");
    let list = wasmvisor(&["policy", "list", "--control", vm.control.to_str().unwrap()]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(list.stdout.contains("generation 2"), "{list:?}");
    assert!(list.stdout.contains("io-tracer"), "{list:?}");
    let unload = wasmvisor(&[
        "policy",
        "unload",
        "--control",
        vm.control.to_str().unwrap(),
        "io-tracer",
    ]);
    assert_eq!(unload.code, 0, "{unload:?}");
    let r = c.request(json!({"op": "list"}));
    assert_eq!(r["generation"], 3, "{r}");
    assert_eq!(r["policies"].as_array().unwrap().len(), 1, "{r}");
    // Unloading the counter leaves the guest's port unanswered: the guest
    // sees the wrong count and halts, which ends the VM.
    assert_eq!(
        c.request(json!({"op": "unload", "name": "counter"}))["ok"],
        true
    );
    let (code, stderr) = vm.wait();
    assert_eq!(code, 0, "{stderr}");
    assert_contains(&stderr, &["all vCPUs halted"]);
}

/// `bytes` with a custom section appended: a different file with the
/// same behaviour, as a rebuild with new debug info would give.
fn with_custom_section(bytes: &[u8], tag: &str) -> Vec<u8> {
    let mut section = vec![tag.len() as u8];
    section.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(section.len() as u8);
    out.extend_from_slice(&section);
    out
}

fn wait_for(vm: &Vm, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !vm.stderr().contains(text) {
        assert!(
            Instant::now() < deadline,
            "`{text}` not seen within 15 s: {}",
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn watch_reloads_an_edited_policy() {
    require_kvm!();
    let dir = scratch("watch");
    let watched = dir.join("counter.wasm");
    let original = std::fs::read(policy("counter")).unwrap();
    std::fs::write(&watched, &original).unwrap();
    let spec = format!("{}:generation=7,@grant=stop-vm", watched.display());
    let mut vm = Vm::start(&dir, 1, &[spec], &["--watch"]);
    std::thread::sleep(Duration::from_millis(300));

    // A broken edit is refused and the old policy keeps serving.
    std::fs::write(&watched, b"half-written").unwrap();
    wait_for(&vm, "watch: reload of counter");
    assert!(
        vm.stderr()
            .contains("is not a WebAssembly file; the old policy keeps serving"),
        "{}",
        vm.stderr()
    );

    // A good edit is picked up.
    std::fs::write(&watched, with_custom_section(&original, "rebuilt")).unwrap();
    wait_for(&vm, "watch: reloaded counter from");
    let mut c = vm.connect();
    let r = c.request(json!({"op": "list"}));
    assert_eq!(r["policies"][0]["generation"], 2, "{r}");
    assert_eq!(
        c.swap("counter", &counter(8, ",stop=true"))["ok"],
        true,
        "{}",
        vm.stderr()
    );
    let (code, stderr) = vm.wait();
    let events = vm.events("generation");
    assert_eq!(code, 0, "{stderr}");
    // The reload handed over like any swap: generation 7 twice (the
    // original and its reload), each continuing the count.
    let handed: Vec<Value> = events
        .iter()
        .filter(|e| e["generation"] == 7)
        .cloned()
        .collect();
    assert_eq!(handed.len(), 2, "{events:?}");
    assert_eq!(
        handed[1]["first"].as_u64(),
        handed[0]["count"].as_u64(),
        "{events:?}"
    );
}

#[test]
fn the_control_socket_refuses_garbage_oversize_and_strangers() {
    require_kvm!();
    let dir = scratch("socket");
    let mut vm = Vm::start(&dir, 1, &[counter(0, "")], &[]);
    let meta = std::fs::symlink_metadata(&vm.control).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // Garbage: answered, then the connection is closed.
    let mut c = vm.connect();
    c.send_raw(b"hello\n");
    let r = c.reply().expect("a reply");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed request: "),
        "{r}"
    );
    assert!(c.reply().is_none(), "closed after garbage");

    let mut c = vm.connect();
    c.send_raw(b"\xff\xfe{\"op\":\0}\n");
    assert_eq!(c.reply().expect("a reply")["ok"], false);

    // Oversized: 70 KiB without a newline.
    let mut c = vm.connect();
    c.send_raw(&vec![b'x'; 70 * 1024]);
    let r = c.reply().expect("a reply");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("request longer than 65536 bytes"),
        "{r}"
    );

    // A peer running as another user. Only root can stage one: open the
    // socket's mode so the connection itself gets through, and check the
    // server still turns the peer away by its credentials.
    if euid() == 0 {
        std::fs::set_permissions(&vm.control, std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin())
            .args(["policy", "list", "--control"])
            .arg(&vm.control)
            .output()
            .expect("setpriv runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{stderr}");
        assert_contains(
            &stderr,
            &["permission denied: this VM is controlled by uid 0 only"],
        );
        assert!(
            vm.stderr()
                .contains("control: refused a connection from uid 65534"),
            "{}",
            vm.stderr()
        );
    } else {
        eprintln!("not root: the foreign-peer check needs root to switch users");
    }

    // None of that disturbed the VM.
    let mut c = vm.connect();
    let r = c.request(json!({"op": "list"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(c.swap("counter", &counter(1, ",stop=true"))["ok"], true);
    let control = vm.control.clone();
    let (code, stderr) = vm.wait();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !control.exists(),
        "the socket file is removed when the VM ends"
    );

    // The client's own errors are one line.
    let missing = wasmvisor(&["policy", "list", "--control", "/nonexistent/ctl"]);
    assert!(missing
        .one_error_line()
        .contains("cannot connect to control socket /nonexistent/ctl"));
}

/// This process's effective uid, from /proc (no libc in the tests).
fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn precompiled_policies_load_from_the_cache_and_tampering_is_caught() {
    require_kvm!();
    let dir = scratch("cache");
    let cache = dir.join("cache");
    let pre = wasmvisor(&[
        "policy",
        "precompile",
        "--policy-cache",
        cache.to_str().unwrap(),
        &policy("counter"),
    ]);
    assert_eq!(pre.code, 0, "{pre:?}");
    let entry = PathBuf::from(pre.stdout.trim().rsplit(" -> ").next().unwrap());
    assert!(entry.is_file(), "{pre:?}");
    let mut vm = Vm::start(
        &dir,
        1,
        &[counter(0, "")],
        &["--policy-cache", cache.to_str().unwrap()],
    );
    let mut c = vm.connect();
    let r = c.swap("counter", &counter(1, ""));
    assert_eq!(r["change"]["cache"], "hit", "{r}");
    // A flipped byte in the entry is noticed and the entry rebuilt.
    let mut bytes = std::fs::read(&entry).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0x5a;
    std::fs::write(&entry, &bytes).unwrap();
    let r = c.swap("counter", &counter(2, ""));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["change"]["cache"], "rebuilt", "{r}");
    let r = c.swap("counter", &counter(3, ",stop=true"));
    assert_eq!(r["change"]["cache"], "hit", "{r}");
    let (code, stderr) = vm.wait();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn page_protections_change_with_their_policy() {
    require_kvm!();
    let dir = scratch("protect");
    let guard = |range: &str| {
        format!(
            "{}:discover=false,protect={range},@grant=protect-memory",
            policy("mem-guard")
        )
    };
    let mut vm = Vm::start(&dir, 1, &[counter(0, ""), guard("0x100000+0x2000")], &[]);
    let mut c = vm.connect();
    // RAM below, the read-only pages, RAM above: three memslots.
    let r = c.request(json!({"op": "list"}));
    assert_eq!(r["memslots"], 3, "{r}");
    assert_eq!(r["policies"][1]["protected_bytes"], 0x2000, "{r}");
    // The successor guards another range: the old one is released in the
    // same switch, so the layout still has three slots, not five.
    assert_eq!(c.swap("mem-guard", &guard("0x200000+0x1000"))["ok"], true);
    let r = c.request(json!({"op": "list"}));
    assert_eq!(r["memslots"], 3, "{r}");
    assert_eq!(r["policies"][1]["protected_bytes"], 0x1000, "{r}");
    // Unloaded, it leaves RAM whole again.
    let r = c.request(json!({"op": "unload", "name": "mem-guard"}));
    assert_eq!(r["ok"], true, "{r}");
    let r = c.request(json!({"op": "list"}));
    assert_eq!(r["memslots"], 1, "{r}");
    assert_eq!(c.swap("counter", &counter(1, ",stop=true"))["ok"], true);
    let (code, stderr) = vm.wait();
    assert_eq!(code, 0, "{stderr}");
}
