//! One vCPU: setup, `KVM_RUN`, exit snapshots and completions.
//!
//! `VcpuExit<'_>` borrows `kvm_run`, so [`Vcpu::run`] copies what the rest
//! of the pipeline needs into an owned [`ExitEvent`](wasmvisor_exit::ExitEvent) and remembers what
//! the exit still owes the guest ([`Pending`]). After the policy or the
//! default handler answered, [`Vcpu::complete`] writes that answer back
//! into `kvm_run`, and the next `KVM_RUN` delivers it. Registers travel
//! in `kvm_run` through `KVM_CAP_SYNC_REGS`, because a `KVM_GET_REGS`
//! ioctl costs as much as a whole exit on a software KVM backend.
//!
//! The concerns live in their own files: [`run`] (`KVM_RUN` and the exit
//! snapshot), [`completion`] (answers written back into `kvm_run`),
//! [`regs`] (the register cache and [`VcpuAccess`](wasmvisor_exit::VcpuAccess)), [`debug`]
//! (breakpoints, single-step and re-arming), [`segments`], [`msrs`] and
//! [`setup`] (CPUID, boot state, LAPIC LINTs).

mod completion;
mod debug;
mod msrs;
mod regs;
mod run;
mod segments;
mod setup;
mod state;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::{SyncReg, VcpuFd};
use wasmvisor_exit::{DebugState, Direction, ExitEvent, ExitKind, VcpuAccessError};

pub use debug::DebuggerRegs;
pub use run::{FatalExit, RunOutcome};
pub use state::VcpuState;

/// What the current exit still owes the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    None,
    /// Port I/O: `count` elements of `size` bytes at `data_offset` in
    /// `kvm_run`; `element` is the one being handled.
    Io {
        port: u16,
        direction: Direction,
        size: u8,
        count: u32,
        data_offset: u64,
        element: u32,
    },
    MmioRead {
        len: u8,
    },
    Msr,
}

/// A vCPU and its exit bookkeeping.
pub struct Vcpu {
    fd: VcpuFd,
    index: u32,
    seq: u64,
    sync_regs: bool,
    pending: Pending,
    /// Segment/control registers, fetched at most once per exit.
    sregs: Option<kvm_sregs>,
    sregs_dirty: bool,
    /// General registers when KVM lacks sync regs.
    regs: Option<kvm_regs>,
    regs_dirty: bool,
    /// Breakpoints and single-step, as last given to KVM.
    debug: DebugState,
    /// What this KVM can save and restore beyond the basics.
    caps: StateCaps,
}

/// The optional parts of a vCPU's state this KVM offers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StateCaps {
    pub xsave: bool,
    pub xcrs: bool,
}

impl Vcpu {
    /// The domain event for this vCPU's next exit, numbered in order.
    #[inline]
    pub(super) fn next_event(&mut self, rip: u64, kind: ExitKind) -> ExitEvent {
        let event = ExitEvent {
            vcpu: self.index,
            seq: self.seq,
            rip,
            kind,
        };
        self.seq += 1;
        event
    }

    pub(crate) fn new(fd: VcpuFd, index: u32, sync_regs: bool, caps: StateCaps) -> Vcpu {
        let mut v = Vcpu {
            fd,
            index,
            seq: 0,
            sync_regs,
            pending: Pending::None,
            sregs: None,
            sregs_dirty: false,
            regs: None,
            regs_dirty: false,
            debug: DebugState::default(),
            caps,
        };
        if sync_regs {
            v.fd.set_sync_valid_reg(SyncReg::Register);
        }
        v
    }

    /// Index of this vCPU.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Exits taken so far.
    pub fn exits(&self) -> u64 {
        self.seq
    }

    /// Raw pointer to this vCPU's `kvm_run`, for the kick signal handler.
    pub(crate) fn kvm_run_ptr(&mut self) -> *mut kvm_bindings::kvm_run {
        self.fd.get_kvm_run()
    }
}

fn access_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuAccessError {
    move |e| VcpuAccessError {
        op,
        reason: e.to_string(),
    }
}
