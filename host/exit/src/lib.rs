//! The exit pipeline's domain model, free of KVM and wasmtime.
//!
//! A vCPU exit is snapshotted into an owned [`ExitEvent`], [`classify`]
//! picks who answers it from the [`Routes`] built out of the policies'
//! [`Subscriptions`], the answer comes back as [`Action`]s, and [`apply`]
//! checks them against the exit and the answering policy's grants before
//! touching the vCPU (through [`VcpuAccess`]) or guest memory. Everything
//! here is pure so that it can be tested without `/dev/kvm`.
#![forbid(unsafe_code)]

mod action;
mod apply;
mod constant;
mod debug;
mod defaults;
mod event;
mod interrupt;
mod pagewalk;
mod protection;
mod regs;
mod routes;
mod subscription;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod validate;

pub use action::{Action, Exception, ProtectRequest, Protection, StopRequest};
pub use apply::{
    apply, perform_access, ApplyError, Completion, Flow, GuestEnv, VcpuAccess, VcpuAccessError,
};
pub use constant::{constant_answer, constants_outside, Constant, ConstantAnswer, ConstantTarget};
pub use debug::{DebugState, HwBreakpoint, HwBreakpointKind, Segment, SegmentReg};
pub use defaults::default_actions;
pub use event::{
    size_mask, DebugCause, DebugExit, Direction, ExitEvent, ExitKind, IoExit, MemAccess,
    MemViolation, MmioExit, MsrExit, MsrReason, ShutdownReason,
};
pub use interrupt::{InterruptLines, IrqAccess, IrqSet, RecordedLines, MAX_IRQ_LINE};
pub use pagewalk::{
    translate, translate_with_maxphyaddr, PagingMode, PagingState, PhysRead, Translation,
    WalkFault, DEFAULT_MAXPHYADDR, MIN_MAXPHYADDR,
};
pub use protection::{MemoryProtector, ProtectError, ProtectionMap, Run, PAGE_SIZE};
pub use regs::Reg;
pub use routes::{classify, Route, Routes, RoutesError, Target, MAX_MSR_FILTER_RANGES};
pub use subscription::{Capabilities, EventSet, GpaRange, Subscriptions};
pub use validate::{validate, ActionFault};

/// Guest RAM as the host maps it. Every host write through it (policy
/// imports and actions, device DMA, the loaders) marks its pages in a
/// per-region bitmap, which a fast reset reads with KVM's dirty log to
/// know which pages to put back (`docs/snapshots.md`).
pub type GuestRam = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
