//! How a VM ends: a guest fault is one line with vCPU, RIP and reason; a
//! signal stops the VM cleanly; a policy's stop action sets the exit code.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasmvisor_tests::*;

#[test]
fn triple_fault_is_one_line_with_vcpu_rip_and_reason() {
    require_kvm!();
    let dir = scratch("triple");
    let p = dir.join("ud2.bin");
    // ud2 in protected mode with no IDT: #UD -> #GP -> #DF -> shutdown.
    std::fs::write(&p, [0x0f, 0x0b]).unwrap();
    let r = wasmvisor(&["run", "--guest", p.to_str().unwrap(), "--mode", "protected"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let fault = [guest_fault_line(&r.stderr)];
    assert_contains(fault[0], &["vcpu 0 at rip 0x"]);
    assert!(
        fault[0].contains("shutdown (triple fault)") || fault[0].contains("KVM internal error"),
        "{}",
        fault[0]
    );
}

#[test]
fn emulator_failure_is_one_line_with_instruction_bytes() {
    require_kvm!();
    let dir = scratch("iret");
    let p = dir.join("iret.bin");
    // This machine's KVM emulates CPL0 code and cannot emulate a
    // protected-mode IRET: KVM_EXIT_INTERNAL_ERROR. On hardware KVM the
    // IRET faults on the empty stack and ends as a triple fault instead.
    std::fs::write(&p, [0xcf]).unwrap();
    let r = wasmvisor(&["run", "--guest", p.to_str().unwrap(), "--mode", "protected"]);
    assert_eq!(r.code, 3, "{r:?}");
    let fault = [guest_fault_line(&r.stderr)];
    assert!(
        fault[0].starts_with("wasmvisor: guest fault: vcpu 0 at rip 0x8000: "),
        "{}",
        fault[0]
    );
    assert!(
        fault[0]
            .contains("KVM internal error: the instruction emulator failed; instruction bytes: cf")
            || fault[0].contains("shutdown (triple fault)"),
        "{}",
        fault[0]
    );
}

#[test]
fn sigint_stops_a_spinning_guest() {
    require_kvm!();
    let dir = scratch("spin");
    let p = dir.join("spin.bin");
    std::fs::write(&p, [0xeb, 0xfe]).unwrap(); // jmp $
    let child = Command::new(bin())
        .args(["run", "--guest", p.to_str().unwrap(), "--vcpus", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "slow to stop");
    let r: Run = out.into();
    assert_eq!(r.code, 130, "{r:?}");
    assert_contains(&r.stderr, &["stopped by signal 2"]);
}

#[test]
fn policy_stop_action_sets_exit_code() {
    require_kvm!();
    let r = Cmd::guest("devices.bin")
        .mode("protected")
        .policy("serial")
        .policy_with(
            "msr-guard",
            "watch=0x170-0x17f,allow=0x174,on-deny=stop,@grant=stop-vm",
        )
        .expect_exit(4);
    assert_contains(&r.stderr, &["stopped by policy msr-guard (failure)"]);
    // The guest got as far as the denied MSR and no further.
    assert_contains(&r.stdout, &["msr 0x174: "]);
    assert!(!r.stdout.contains("msr 0x175: "), "{}", r.stdout);
}

#[test]
fn an_i8042_reset_ends_the_run_cleanly() {
    require_kvm!();
    let g = guest("reset.bin").display().to_string();
    let r = wasmvisor(&["run", "--guest", &g]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("wasmvisor: the guest reset the machine (i8042 reset line); not rebooting"),
        "{r:?}"
    );
    // A policy on the controller's ports answers before the built-in one.
    let noop = format!("{}:ports=0x64", policy("noop"));
    let r = wasmvisor(&[
        "run", "--guest", &g, "--policy", &noop, "--serial", "native",
    ]);
    assert!(r.stderr.contains("all vCPUs halted"), "{r:?}");
}

/// The tests' own guard against hangs: a guest that waits in HLT for an
/// interrupt that never comes (the in-kernel irqchip keeps HLT in the
/// kernel) is killed at the limit, and the test hears of it.
#[test]
fn a_run_that_outlives_its_limit_is_killed_and_reported() {
    require_kvm!();
    let g = guest("hello.elf");
    let started = Instant::now();
    let r = wasmvisor_within(
        &["run", "--guest", g.to_str().unwrap(), "--irqchip"],
        Duration::from_secs(2),
    );
    let killed = r.expect_err("hello.elf under --irqchip halts for ever");
    assert_eq!(killed.code, -1, "{killed:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not killed in time"
    );
}

/// The one `guest fault` line a run that died printed on stderr.
fn guest_fault_line(stderr: &str) -> &str {
    let fault: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("guest fault"))
        .collect();
    assert_eq!(fault.len(), 1, "{stderr}");
    fault[0]
}
