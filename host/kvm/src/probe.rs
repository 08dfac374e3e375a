//! What this KVM backend's guest debugging does that its capabilities do
//! not say, measured once on a throwaway 1 MiB VM.

use vm_memory::{Bytes, GuestAddress};
use wasmvisor_exit::{
    DebugCause, DebugState, ExitKind, HwBreakpoint, HwBreakpointKind, VcpuAccess,
};

use crate::{BootMode, BootState, KvmError, RunOutcome, Vm};

/// Where the probes' code sits (above the host-reserved page).
const CODE: u64 = 0x8000;
/// The data word the data-breakpoint probe writes.
const DATA: u64 = 0x9000;

/// Whether a guest's `int3` reaches the host as a debug exit when the VMM
/// asks for it (`KVM_GUESTDBG_USE_SW_BP`). Hardware KVM does; a backend
/// that emulates the guest's kernel code may not (this machine's PVM
/// backend fails in its emulator instead), and then a debugger's software
/// breakpoints must use the hardware slots. The probe runs `int3; hlt` in
/// real mode, with the guest's own #BP vector pointing at the `hlt`, so
/// that every outcome ends it.
pub fn traps_int3() -> Result<bool, KvmError> {
    let debug = DebugState {
        debugger_int3: true,
        ..DebugState::default()
    };
    // IVT entry 3 (offset, segment) -> 0000:8001, the hlt.
    let cause = probe(
        BootMode::Real,
        &[0xcc, 0xf4, 0xf4],
        &[(3 * 4, &[0x01, 0x80, 0, 0])],
        debug,
    )?;
    Ok(cause == Some(DebugCause::SwBreakpoint))
}

/// Whether a hardware data breakpoint (a write watchpoint in DR0-3)
/// fires in kernel-mode guest code. Hardware KVM runs that code on the
/// CPU, which checks DR7; a backend that emulates it may skip the check
/// (this machine's PVM backend does), and then a debugger must watch
/// writes some other way (docs/gdb.md: page protection). The probe runs
/// `mov dword [DATA], 1; hlt` in flat 32-bit mode.
pub fn traps_data_breakpoints() -> Result<bool, KvmError> {
    let mut debug = DebugState::default();
    debug.hw[0] = Some(HwBreakpoint {
        kind: HwBreakpointKind::Write,
        gva: DATA,
        len: 4,
    });
    let code = [
        0xc7, 0x05, 0x00, 0x90, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0xf4, 0xf4,
    ];
    let cause = probe(BootMode::Protected, &code, &[], debug)?;
    Ok(cause == Some(DebugCause::HwBreakpoint))
}

/// Runs `code` at [`CODE`] in `mode` with `debug`, after writing `extra`
/// bytes; the cause of the first exit if it was a debug exit.
fn probe(
    mode: BootMode,
    code: &[u8],
    extra: &[(u64, &[u8])],
    debug: DebugState,
) -> Result<Option<DebugCause>, KvmError> {
    let vm = Vm::new(1 << 20)?;
    let boot = BootState {
        mode,
        entry: CODE,
        vcpu_count: 1,
        linux: None,
    };
    boot.write_tables(vm.memory())?;
    for &(at, bytes) in [(CODE, code)].iter().chain(extra) {
        vm.memory()
            .write_slice(bytes, GuestAddress(at))
            .map_err(|e| KvmError::BootWrite {
                what: "a debug probe",
                reason: e.to_string(),
            })?;
    }
    let mut vcpu = vm.create_vcpu(0)?;
    vcpu.boot(&boot)?;
    vcpu.set_debug_state(debug)
        .map_err(|e| KvmError::Debug(e.to_string()))?;
    for _ in 0..4 {
        match vcpu.run()? {
            RunOutcome::Interrupted => continue,
            RunOutcome::Exit(e) => {
                return Ok(match e.kind {
                    ExitKind::Debug(d) => Some(d.cause),
                    _ => None,
                })
            }
            RunOutcome::Fatal(_) => return Ok(None),
        }
    }
    Ok(None)
}
