//! A reset puts RAM back byte for byte, and the registers with it: random
//! writes by the guest (through KVM, seen by its dirty log) and by the
//! host (through the RAM mapping, seen by its bitmap) between a baseline
//! and a reset, on real KVM (a property test).

use std::collections::BTreeSet;

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};
use wasmvisor_exit::ExitKind;
use wasmvisor_kvm::{BootMode, BootState, RunOutcome, Vcpu, Vm};

use super::memory::{self, SparseRam, PAGE};

/// Guest RAM of the test VM.
const RAM: u64 = 4 << 20;
/// Where the guest's list of writes lives: a count, then (address,
/// value) dword pairs.
const TABLE: u64 = 0x9000;
/// Guest writes land at or above this address.
const LOW: u64 = 0x1_0000;

/// 32-bit protected mode, flat, at 0x8000: performs the table's writes
/// and halts.
const PROGRAM: [u8; 28] = [
    0xbe, 0x00, 0x90, 0x00, 0x00, // mov esi, 0x9000
    0x8b, 0x0e, // mov ecx, [esi]
    0x83, 0xc6, 0x04, // add esi, 4
    0x85, 0xc9, // test ecx, ecx
    0x74, 0x0d, // jz hlt
    0x8b, 0x06, // loop: mov eax, [esi]
    0x8b, 0x5e, 0x04, // mov ebx, [esi + 4]
    0x89, 0x18, // mov [eax], ebx
    0x83, 0xc6, 0x08, // add esi, 8
    0x49, // dec ecx
    0x75, 0xf3, // jnz loop
    0xf4, // hlt
];

/// KVM tests fail without /dev/kvm unless WASMVISOR_SKIP_KVM=1.
fn kvm() -> bool {
    if std::path::Path::new("/dev/kvm").exists() {
        return true;
    }
    assert_eq!(
        std::env::var("WASMVISOR_SKIP_KVM").as_deref(),
        Ok("1"),
        "/dev/kvm is missing (set WASMVISOR_SKIP_KVM=1 to skip KVM tests)"
    );
    false
}

fn vm_with_program() -> (Vm, Vcpu) {
    let vm = Vm::new(RAM).expect("VM");
    let boot = BootState {
        mode: BootMode::Protected,
        entry: 0x8000,
        vcpu_count: 1,
        linux: None,
    };
    boot.write_tables(vm.memory()).expect("tables");
    vm.memory()
        .write_slice(&PROGRAM, GuestAddress(0x8000))
        .expect("program");
    let mut vcpu = vm.create_vcpu(0).expect("vCPU");
    vcpu.set_cpuid(&vm.supported_cpuid().expect("cpuid"))
        .expect("set cpuid");
    vcpu.boot(&boot).expect("boot");
    (vm, vcpu)
}

/// Runs until the program's HLT; returns its RIP.
fn run_to_hlt(vcpu: &mut Vcpu) -> u64 {
    loop {
        match vcpu.run().expect("KVM_RUN") {
            RunOutcome::Exit(e) if e.kind == ExitKind::Hlt => return e.rip,
            RunOutcome::Interrupted => continue,
            other => panic!("the program did not halt: {other:?}"),
        }
    }
}

fn ram_bytes(vm: &Vm) -> Vec<u8> {
    let mut all = vec![0u8; RAM as usize];
    vm.memory().read_slice(&mut all, GuestAddress(0)).unwrap();
    all
}

fn one_reset(host_writes: &[(u64, Vec<u8>)], guest_writes: &[(u64, u32)]) {
    let (vm, mut vcpu) = vm_with_program();
    // Some content before the baseline, so a reset has non-zero pages to
    // put back as well as zero ones.
    vm.memory()
        .write_slice(&[0x5a; 3 * PAGE as usize], GuestAddress(0x20_0000))
        .unwrap();
    let msrs = vm.saved_msrs(&vcpu).expect("MSR list");
    let state = vcpu.save_state(&msrs, false).expect("save");
    let before = ram_bytes(&vm);
    let base = SparseRam::capture(vm.memory(), RAM).unwrap();
    vm.memslots().start_dirty_log().expect("dirty log");
    memory::clear_host_dirty(vm.memory());

    let mut touched = BTreeSet::new();
    for (gpa, data) in host_writes {
        vm.memory().write_slice(data, GuestAddress(*gpa)).unwrap();
        touched.extend(gpa / PAGE..=(gpa + data.len() as u64 - 1) / PAGE);
    }
    let mut table = (guest_writes.len() as u32).to_le_bytes().to_vec();
    for (gpa, value) in guest_writes {
        table.extend_from_slice(&(*gpa as u32).to_le_bytes());
        table.extend_from_slice(&value.to_le_bytes());
        touched.extend([gpa / PAGE, (gpa + 3) / PAGE]);
    }
    vm.memory()
        .write_slice(&table, GuestAddress(TABLE))
        .unwrap();
    touched.extend(TABLE / PAGE..=(TABLE + table.len() as u64 - 1) / PAGE);
    let hlt = run_to_hlt(&mut vcpu);

    let mut pages = vm.memslots().take_dirty_pages().expect("dirty log");
    pages.extend(memory::take_host_dirty(vm.memory()));
    pages.sort_unstable();
    pages.dedup();
    let dirty: BTreeSet<u64> = pages.iter().copied().collect();
    assert!(
        touched.is_subset(&dirty),
        "every page written is reported: {:?} not in {dirty:?}",
        touched.difference(&dirty).collect::<Vec<_>>()
    );
    // Only those (give or take the descriptor pages the CPU itself
    // touches): a reset copies what changed, not all of RAM.
    assert!(
        dirty.len() <= touched.len() + 4,
        "{} pages reported for {} written",
        dirty.len(),
        touched.len()
    );
    base.restore(vm.memory(), &pages).unwrap();
    vcpu.restore_state(&state).expect("restore");

    assert!(ram_bytes(&vm) == before, "RAM differs after the reset");
    let back = vcpu.save_state(&msrs, false).expect("save again");
    assert_eq!(back.regs, state.regs);
    assert_eq!(back.sregs, state.sregs);
    // And the guest runs the same way again from there (its table is
    // gone: the reset put back the zeros, so it makes no writes).
    let rip = run_to_hlt(&mut vcpu);
    assert_eq!(rip, hlt, "halts at the same place");
}

fn guest_write() -> impl Strategy<Value = (u64, u32)> {
    // Dword-aligned, at or above LOW, inside RAM, off the table's page.
    ((LOW / 4)..(RAM / 4 - 1), any::<u32>())
        .prop_map(|(d, v)| (d * 4, v))
        .prop_filter("not the table", |(gpa, _)| gpa / PAGE != TABLE / PAGE)
}

fn host_write() -> impl Strategy<Value = (u64, Vec<u8>)> {
    (
        LOW..RAM - 9000,
        proptest::collection::vec(any::<u8>(), 1..9000),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn a_reset_restores_ram_and_registers(
        host in proptest::collection::vec(host_write(), 0..6),
        guest in proptest::collection::vec(guest_write(), 1..200),
    ) {
        if kvm() {
            one_reset(&host, &guest);
        }
    }
}
