//! Device interrupts: COM1's IRQ 4 through KVM's in-kernel PIC, raised by
//! the native UART and by the Wasm serial policy through `set-irq-line`,
//! on the `irq` guest (`--irqchip`), and what happens when a policy may
//! not drive the line or the VM has no interrupt controller.

use wasmvisor_tests::*;

const DELIVERED: &str = "irq: IRQ 4 delivered, IIR 0002";

fn run_irq_guest(extra: &[&str]) -> Run {
    let guest = guest("irq.bin");
    let mut args = vec!["run", "--guest", guest.to_str().unwrap()];
    args.extend(extra);
    wasmvisor(&args)
}

#[test]
fn the_native_uart_raises_irq_4() {
    require_kvm!();
    let r = run_irq_guest(&["--irqchip", "--serial", "native"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(DELIVERED), "{r:?}");
    assert_contains(&r.stderr, &["i8042 reset"]);
}

#[test]
fn the_serial_policy_raises_irq_4_when_granted_the_line() {
    require_kvm!();
    let spec = format!("{}:@irq=4", policy("serial"));
    let r = run_irq_guest(&["--irqchip", "--policy", &spec]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(DELIVERED), "{r:?}");
    assert!(!r.stderr.contains("warn"), "{}", r.stderr);
}

/// Without `@irq=4` the import answers `not-granted`: the UART keeps
/// working polled, says so once, and the guest's timer ends its wait.
#[test]
fn without_the_grant_the_serial_policy_runs_polled_and_says_so() {
    require_kvm!();
    let r = run_irq_guest(&["--irqchip", "--policy", &policy("serial")]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("irq: no IRQ 4"), "{r:?}");
    let warnings: Vec<&str> = r.stderr.lines().filter(|l| l.contains("warn")).collect();
    assert_eq!(warnings.len(), 1, "{}", r.stderr);
    assert_contains(warnings[0], &["interrupt line 4 not granted"]);
}

/// A VM without `--irqchip` has no interrupt controller: `unsupported`.
/// HLT then ends the run, since no interrupt can wake it.
#[test]
fn without_an_interrupt_controller_the_import_is_unsupported() {
    require_kvm!();
    let spec = format!("{}:@irq=4", policy("serial"));
    let r = run_irq_guest(&["--policy", &spec]);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_contains(&r.stderr, &["interrupt line 4 unsupported"]);
    assert!(!r.stdout.contains(DELIVERED), "{r:?}");
}

#[test]
fn a_bad_irq_grant_is_one_error_line() {
    let spec = format!("{}:@irq=24", policy("serial"));
    let line = run_irq_guest(&["--irqchip", "--policy", &spec]).one_error_line();
    assert_contains(&line, &["@irq=24"]);
}
