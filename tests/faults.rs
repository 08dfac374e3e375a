//! Fault containment on a real guest: the hostile fixture policy traps,
//! runs past its deadline, exceeds its memory cap and returns an answer
//! that must be rejected, under each fault mode.

use wasmvisor_tests::*;

fn hostile(sandbox: &str) -> String {
    let p = assets().join("fixtures/hostile.wasm");
    let mut spec = format!("{}:@grant=write-memory", p.display());
    if !sandbox.is_empty() {
        spec.push(',');
        spec.push_str(sandbox);
    }
    spec
}

fn faults_guest(sandbox: &str) -> Run {
    Cmd::guest("faults.bin")
        .policy("serial")
        .args(["--policy", &hostile(sandbox), "--stats"])
        .run()
}

fn fault_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("wasmvisor: policy hostile fault "))
        .collect()
}

const PROBES: &str =
    "faults: start\npanic: 00ff\nspin: 00ff\nhog: 00ff\nbad: 00ff\nram: 56781234\n";

#[test]
fn fail_open_guest_keeps_running_and_ram_is_untouched() {
    require_kvm!();
    let r = faults_guest("@quarantine=0");
    assert_eq!(r.code, 0, "{r:?}");
    // Every faulted read fell through to the default (all-ones), and the
    // rejected answer's write to 0x9000 never landed.
    assert!(r.stdout.starts_with(PROBES), "{}", r.stdout);
    assert!(
        r.stdout
            .ends_with(&format!("loop: {}\nfaults: done\n", ".".repeat(20))),
        "{}",
        r.stdout
    );
    let lines = fault_lines(&r.stderr);
    assert_eq!(lines.len(), 24, "one line per fault:\n{}", r.stderr);
    // Each names the policy, vCPU, exit and reason, and the fault mode.
    assert_contains(lines[0], &["on vcpu 0 at an io exit (port 0x12)", "trap"]);
    assert!(
        lines[1].contains("port 0x13") && lines[1].contains("deadline"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("port 0x14") && lines[2].contains("memory"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains("port 0x1e") && lines[3].contains("rejected answer"),
        "{}",
        lines[3]
    );
    assert!(
        lines.iter().all(|l| l.ends_with("failing open")),
        "{}",
        r.stderr
    );
}

#[test]
fn looping_policy_never_holds_a_vcpu_past_its_deadline() {
    require_kvm!();
    let r = faults_guest("@quarantine=0,@deadline=10ms");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("loop: {}\n", ".".repeat(20))),
        "{}",
        r.stdout
    );
    let stats = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("stats: "))
        .expect("stats line");
    let stats: serde_json::Value = serde_json::from_str(stats).unwrap();
    let hostile = stats["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "hostile")
        .unwrap();
    assert_eq!(hostile["faults"], 24);
    // The deadline counts the vCPU thread's CPU time (a descheduled thread
    // keeps its call), and is confirmed one deadline after it first fires:
    // a spinning call ends after about 2-3 deadlines of CPU. The wall-clock
    // bound allows for a loaded 2-core CI host; a policy that is never
    // interrupted would hold the vCPU forever.
    let max_ns = hostile["max_call_ns"].as_u64().unwrap();
    assert!(
        max_ns >= 10_000_000,
        "a spin ended before its deadline: {max_ns} ns"
    );
    assert!(max_ns < 2_000_000_000, "a vCPU was held {max_ns} ns");
}

#[test]
fn fail_closed_gp_raises_gp_in_the_guest() {
    require_kvm!();
    let r = faults_guest("@on-fault=gp,@quarantine=0");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with("faults: start\npanic: #GP\n00ff\nspin: #GP\n00ff\nhog: #GP\n00ff\nbad: #GP\n00ff\nram: 56781234\n"),
        "{}",
        r.stdout
    );
    assert!(fault_lines(&r.stderr)
        .iter()
        .all(|l| l.ends_with("raising #GP in the guest")));
}

#[test]
fn fail_closed_stop_ends_the_vm_with_exit_code_5() {
    require_kvm!();
    let r = faults_guest("@on-fault=stop");
    assert_eq!(r.code, 5, "{r:?}");
    assert_eq!(r.stdout, "faults: start\npanic: ");
    assert_eq!(fault_lines(&r.stderr).len(), 1, "{}", r.stderr);
    assert_contains(&r.stderr, &["wasmvisor: stopped: policy hostile faulted and fails closed: vcpu 0 at an io exit (port 0x12)"]);
}

#[test]
fn repeated_faults_quarantine_the_policy() {
    require_kvm!();
    let r = faults_guest("@quarantine=3");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with(PROBES), "{}", r.stdout);
    assert_eq!(fault_lines(&r.stderr).len(), 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("wasmvisor: policy hostile quarantined after 3 faults"),
        "{}",
        r.stderr
    );
    // Once quarantined it is skipped: the loop ran at default speed and the
    // policy saw no more calls.
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("policy hostile: "))
        .unwrap();
    assert_contains(line, &["faults 3,"]);
}

#[test]
fn ungranted_capability_is_refused_at_load() {
    require_kvm!();
    let p = assets().join("fixtures/hostile.wasm");
    let line = Cmd::guest("faults.bin")
        .args(["--policy", p.to_str().unwrap()])
        .run()
        .one_error_line();
    assert_contains(&line, &["policy hostile: asks for the write-memory capability, which was not granted (grant it with @grant=write-memory)"]);
}
