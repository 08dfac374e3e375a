//! Guest debugging on real KVM: what a write watchpoint reports, that a
//! debugger's register writes reach the guest, and that the int3 probe
//! answers.

use vm_memory::{Bytes, GuestAddress};
use wasmvisor_exit::{
    DebugCause, DebugState, ExitKind, HwBreakpoint, HwBreakpointKind, VcpuAccess,
};
use wasmvisor_kvm::{BootMode, BootState, RunOutcome, Vcpu, Vm};
use wasmvisor_tests::require_kvm;

const CODE: u64 = 0x8000;
const DATA: u64 = 0x9000;

/// `mov dword [DATA], 1; nop; mov eax, [DATA]; hlt` in flat 32-bit mode.
fn guest() -> (Vm, Vcpu) {
    let vm = Vm::new(1 << 20).expect("VM");
    let boot = BootState {
        mode: BootMode::Protected,
        entry: CODE,
        vcpu_count: 1,
        linux: None,
    };
    boot.write_tables(vm.memory()).expect("tables");
    let code = [
        0xc7, 0x05, 0x00, 0x90, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // mov dword [0x9000], 1
        0x90, // nop
        0xa1, 0x00, 0x90, 0x00, 0x00, // mov eax, [0x9000]
        0xf4, // hlt
    ];
    vm.memory()
        .write_slice(&code, GuestAddress(CODE))
        .expect("code");
    let mut vcpu = vm.create_vcpu(0).expect("vCPU");
    vcpu.boot(&boot).expect("boot");
    (vm, vcpu)
}

fn next_exit(vcpu: &mut Vcpu) -> (u64, ExitKind) {
    loop {
        match vcpu.run().expect("KVM_RUN") {
            RunOutcome::Exit(e) => return (e.rip, e.kind),
            RunOutcome::Interrupted => continue,
            RunOutcome::Fatal(f) => panic!("guest failed: {f}"),
        }
    }
}

#[test]
fn a_write_watchpoint_stops_after_the_store_where_the_backend_checks_it() {
    require_kvm!();
    let fires = wasmvisor_kvm::traps_data_breakpoints().expect("probe");
    eprintln!("data breakpoints fire in kernel-mode guest code: {fires}");
    let (_vm, mut vcpu) = guest();
    let mut d = DebugState::default();
    d.hw[1] = Some(HwBreakpoint {
        kind: HwBreakpointKind::Write,
        gva: DATA,
        len: 4,
    });
    vcpu.set_debug_state(d).expect("guest debug");
    let (rip, kind) = next_exit(&mut vcpu);
    eprintln!("write watchpoint: rip {rip:#x}, {kind:?}");
    if !fires {
        // The probe said so: the store went by unseen.
        assert!(matches!(kind, ExitKind::Hlt), "{kind:?} at {rip:#x}");
        return;
    }
    let ExitKind::Debug(dbg) = kind else {
        panic!("expected a debug exit, got {kind:?} at {rip:#x}")
    };
    assert_eq!(
        rip,
        CODE + 10,
        "a data breakpoint is a trap: after the store"
    );
    assert_eq!((dbg.cause, dbg.slot), (DebugCause::HwBreakpoint, Some(1)));
    vcpu.set_debug_state(DebugState::default()).unwrap();
    let (rip, kind) = next_exit(&mut vcpu);
    assert!(matches!(kind, ExitKind::Hlt), "{kind:?} at {rip:#x}");
}

#[test]
fn debugger_register_writes_reach_the_guest() {
    require_kvm!();
    let (_vm, mut vcpu) = guest();
    let mut regs = vcpu.debugger_regs().expect("read");
    assert_eq!(regs.regs.rip, CODE);
    // Skip the store and the nop: the guest reads 0 into EAX and halts.
    regs.regs.rip = CODE + 11;
    regs.regs.rbx = 0x1234;
    regs.kernel_gs_base = 0xffff_8000_0000_1000;
    vcpu.set_debugger_regs(&regs).expect("write");
    let again = vcpu.debugger_regs().expect("read back");
    assert_eq!(again, regs);
    let (_, kind) = next_exit(&mut vcpu);
    assert!(matches!(kind, ExitKind::Hlt), "{kind:?}");
    let after = vcpu.debugger_regs().unwrap();
    assert_eq!((after.regs.rax, after.regs.rbx), (0, 0x1234));
}

#[test]
fn the_int3_probe_answers() {
    require_kvm!();
    let traps = wasmvisor_kvm::traps_int3().expect("probe");
    eprintln!("this backend traps int3 for the host: {traps}");
}
