//! Snapshots, restore, fast reset and dumps, end to end through the CLI
//! (`docs/snapshots.md`): the ticker guest on two vCPUs under the counter
//! policy (which stops the VM on any number lost or repeated, and whose
//! guest checks every count), the fuzzme guest under the fuzzer policy,
//! and damaged snapshots.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmvisor_tests::{
    assert_contains, guest, json_lines, policy, require_kvm, root, scratch, wasmvisor, Background,
};

const START: Duration = Duration::from_secs(20);

/// The ticker on two vCPUs under the counter policy, with a control
/// socket and events in `dir`.
fn ticker(dir: &Path, tag: &str) -> (Background, PathBuf) {
    let ctl = dir.join(format!("{tag}.ctl"));
    let counter = format!("{}:@grant=stop-vm", policy("counter"));
    let mut vm = Background::start(
        dir,
        tag,
        &[
            "run",
            "--guest",
            guest("ticker.bin").to_str().unwrap(),
            "--vcpus",
            "2",
            "--serial",
            "none",
            "--policy",
            &counter,
            "--control",
            ctl.to_str().unwrap(),
            "--events",
            dir.join(format!("{tag}.jsonl")).to_str().unwrap(),
        ],
    );
    vm.wait_for_file(&ctl, START);
    (vm, ctl)
}

/// `wasmvisor vm OP --control CTL ARGS...`, which must succeed.
fn vm_op(op: &str, ctl: &Path, args: &[&str]) -> String {
    let mut all = vec!["vm", op, "--control", ctl.to_str().unwrap()];
    all.extend_from_slice(args);
    let r = wasmvisor(&all);
    assert_eq!(r.code, 0, "vm {op}: {r:?}");
    r.stdout
}

/// The counter policy's count per vCPU in a snapshot (its `save-state`
/// is the count as 8 little-endian bytes).
fn counts(snap: &Path) -> Vec<u64> {
    (0..2)
        .map(|v| {
            let b = std::fs::read(snap.join(format!("policy-0-vcpu-{v}.state"))).expect("state");
            u64::from_le_bytes(b.try_into().expect("8 bytes"))
        })
        .collect()
}

/// The `generation` events (written by the counter's `save-state`) of
/// one vCPU.
fn generations(events: &Path, vcpu: u64) -> Vec<Value> {
    json_lines(events)
        .into_iter()
        .filter(|e| e["kind"] == "generation" && e["data"]["vcpu"] == vcpu)
        .map(|e| e["data"].clone())
        .collect()
}

#[test]
fn a_snapshot_of_the_ticker_resumes_in_a_new_process_with_its_count() {
    require_kvm!();
    let dir = scratch("snap-ticker");
    let (mut first, ctl) = ticker(&dir, "first");
    std::thread::sleep(Duration::from_millis(300));
    let snap = dir.join("snap");
    let out = vm_op("snapshot", &ctl, &[snap.to_str().unwrap()]);
    assert!(out.starts_with("snapshot: 2 vCPU(s)"), "{out}");
    first.signal("INT");
    first.wait(Duration::from_secs(10));
    let saved = counts(&snap);
    assert!(
        saved.iter().all(|&c| c > 0),
        "the ticker ran before the snapshot: {saved:?}"
    );

    // A new process, started from the snapshot alone.
    let ctl2 = dir.join("second.ctl");
    let events2 = dir.join("second.jsonl");
    let mut second = Background::start(
        &dir,
        "second",
        &[
            "run",
            "--restore",
            snap.to_str().unwrap(),
            "--control",
            ctl2.to_str().unwrap(),
            "--events",
            events2.to_str().unwrap(),
        ],
    );
    second.wait_for_file(&ctl2, START);
    std::thread::sleep(Duration::from_millis(300));
    let snap2 = dir.join("snap2");
    vm_op("snapshot", &ctl2, &[snap2.to_str().unwrap()]);
    second.signal("INT");
    let code = second.wait(Duration::from_secs(10));
    let stderr = second.stderr();
    assert_eq!(code, 130, "the restored ticker ran until stopped: {stderr}");
    assert!(!stderr.contains("mismatch"), "{stderr}");
    // The restored generation's first number is the saved count: no exit
    // lost or repeated across the two processes, and the counter's state
    // came along (the guest checks every count it reads back).
    for v in 0..2u64 {
        let g = generations(&events2, v);
        let gen = g
            .first()
            .unwrap_or_else(|| panic!("vCPU {v} reported: {stderr}"));
        assert_eq!(gen["first"], saved[v as usize], "vCPU {v}: {gen}");
        assert_eq!(
            gen["last"].as_u64().unwrap() + 1,
            counts(&snap2)[v as usize],
            "vCPU {v}: {gen}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resets_through_the_control_socket_rewind_the_guest_and_the_policies() {
    require_kvm!();
    let dir = scratch("snap-reset");
    let (mut vm, ctl) = ticker(&dir, "reset");
    std::thread::sleep(Duration::from_millis(100));
    let out = vm_op("baseline", &ctl, &[]);
    assert!(out.starts_with("baseline: 2 vCPU(s)"), "{out}");
    let events = dir.join("reset.jsonl");
    // The baseline's save-state reported each vCPU's count then.
    let base: Vec<u64> = (0..2)
        .map(|v| generations(&events, v)[0]["count"].as_u64().unwrap())
        .collect();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(20));
        let out = vm_op("reset", &ctl, &[]);
        assert!(out.starts_with("reset "), "{out}");
    }
    // A reset takes the guest and the counter back to the baseline
    // together: a snapshot right after one counts from the baseline's
    // numbers again, below those of a snapshot just before it.
    std::thread::sleep(Duration::from_millis(100));
    let before = dir.join("before");
    vm_op("snapshot", &ctl, &[before.to_str().unwrap()]);
    vm_op("reset", &ctl, &[]);
    let after = dir.join("after");
    vm_op("snapshot", &ctl, &[after.to_str().unwrap()]);
    let (before, after) = (counts(&before), counts(&after));
    for v in 0..2 {
        assert!(
            base[v] <= after[v] && after[v] < before[v],
            "vCPU {v}: baseline {base:?}, before the reset {before:?}, after it {after:?}"
        );
    }
    vm.signal("INT");
    let code = vm.wait(Duration::from_secs(10));
    let stderr = vm.stderr();
    assert_eq!(code, 130, "the ticker never saw a wrong count: {stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The fuzzme guest's seeds as the fuzzer's `seeds=` value.
fn seeds() -> String {
    let dir = root().join("examples/guests/fuzzme-seeds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("seed corpus")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            std::fs::read(f)
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("+")
}

#[test]
fn the_fuzzer_policy_finds_the_planted_crash() {
    require_kvm!();
    let dir = scratch("snap-fuzz");
    let events = dir.join("fuzz.jsonl");
    let fuzzer = format!(
        "{}:seeds={},@grant=set-registers,@grant=write-memory,@grant=stop-vm,@grant=snapshot",
        policy("fuzzer"),
        seeds()
    );
    let started = Instant::now();
    let r = wasmvisor(&[
        "run",
        "--guest",
        guest("fuzzme.elf").to_str().unwrap(),
        "--policy",
        &fuzzer,
        "--events",
        events.to_str().unwrap(),
    ]);
    let wall = started.elapsed();
    assert_eq!(r.code, 0, "stopped cleanly at the finding: {r:?}");
    assert_contains(&r.stderr, &["stopped by policy fuzzer (clean)"]);
    let all = json_lines(&events);
    let of = |kind: &str| all.iter().find(|e| e["kind"] == kind).cloned();
    let start = of("fuzz-start").expect("fuzz-start");
    let finding = of("finding").expect("a finding");
    let f = &finding["data"];
    // The planted bug: a zero-length name record copies into the guard
    // page after the name field, a user-mode #PF at the copy loop.
    assert_eq!(f["kind"], "crash");
    assert_eq!(f["vector"], 14);
    assert_eq!(f["extra"], "0x10a000", "CR2 is the guard page: {f}");
    let execs = f["execs"].as_u64().unwrap();
    let us = finding["t_us"].as_u64().unwrap() - start["t_us"].as_u64().unwrap();
    println!(
        "fuzzer: finding after {execs} execs in {:.1} ms: {:.0} execs/s (whole run {wall:?})",
        us as f64 / 1000.0,
        execs as f64 / (us as f64 / 1e6)
    );
    // The input it reports crashes the parser's model: a name record of
    // length 0.
    let input = f["input"].as_str().unwrap();
    assert!(input.starts_with("5756"), "{input}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A snapshot of the ticker to damage, taken once per test.
fn a_snapshot(dir: &Path) -> PathBuf {
    let (mut vm, ctl) = ticker(dir, "damage");
    std::thread::sleep(Duration::from_millis(50));
    let snap = dir.join("good");
    vm_op("snapshot", &ctl, &[snap.to_str().unwrap()]);
    vm.signal("INT");
    vm.wait(Duration::from_secs(10));
    snap
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// `run --restore DIR` must fail with exit 1 and one line containing
/// `needle`.
fn refused(dir: &Path, needle: &str) {
    let r = wasmvisor(&["run", "--restore", dir.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    let line = r.one_error_line();
    assert!(line.contains(needle), "`{needle}` not in: {line}");
}

/// Rewrites the manifest's body through `edit` and seals it again with
/// the right digest: a snapshot that is well formed but says something
/// else.
fn reseal(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("MANIFEST");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut parts = text.splitn(3, '\n');
    let (head, _, body) = (parts.next().unwrap(), parts.next(), parts.next().unwrap());
    let mut manifest: Value = serde_json::from_str(body).unwrap();
    edit(&mut manifest);
    let body = serde_json::to_vec_pretty(&manifest).unwrap();
    let digest = blake3::hash(&body).to_hex().to_string();
    let mut out = format!("{head}\nblake3 {digest}\n").into_bytes();
    out.extend_from_slice(&body);
    out.push(b'\n');
    std::fs::write(&path, out).unwrap();
}

#[test]
fn damaged_truncated_foreign_and_alien_snapshots_are_refused() {
    require_kvm!();
    let dir = scratch("snap-damage");
    let good = a_snapshot(&dir);
    let case = |name: &str| {
        let d = dir.join(name);
        copy_dir(&good, &d);
        d
    };

    let d = case("flipped");
    let mut ram = std::fs::read(d.join("memory.bin")).unwrap();
    let at = ram.len() - 100;
    ram[at] ^= 0xff;
    std::fs::write(d.join("memory.bin"), ram).unwrap();
    refused(&d, "is damaged: memory.bin does not match its digest");

    let d = case("truncated");
    let b = std::fs::read(d.join("vcpu-1.bin")).unwrap();
    std::fs::write(d.join("vcpu-1.bin"), &b[..b.len() / 2]).unwrap();
    refused(&d, "vcpu-1.bin is");

    let d = case("version");
    let text = std::fs::read_to_string(d.join("MANIFEST")).unwrap();
    std::fs::write(
        d.join("MANIFEST"),
        text.replacen("wasmvisor-snapshot 1", "wasmvisor-snapshot 7", 1),
    )
    .unwrap();
    refused(&d, "is format version 7; this wasmvisor reads version 1");

    let d = case("edited");
    let text = std::fs::read_to_string(d.join("MANIFEST")).unwrap();
    std::fs::write(
        d.join("MANIFEST"),
        text.replacen("\"vcpus\": 2", "\"vcpus\": 3", 1),
    )
    .unwrap();
    refused(&d, "MANIFEST does not match its digest");

    // Well formed and sealed, but for a CPU this host's KVM cannot be:
    // every feature bit of leaf 7 set.
    let d = case("alien");
    reseal(&d, |m| {
        for leaf in m["cpuid"].as_array_mut().unwrap() {
            if leaf["function"] == 7 && leaf["index"] == 0 {
                leaf["ebx"] = Value::from(u32::MAX);
            }
        }
    });
    refused(
        &d,
        "does not fit this host: the guest's CPUID leaf 0x7.0 ebx has bits",
    );

    refused(&dir.join("nowhere"), "is not a wasmvisor snapshot");
    std::fs::remove_dir_all(&dir).ok();
}
