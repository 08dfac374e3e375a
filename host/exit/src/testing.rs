//! A fake vCPU for tests, fuzz targets and benches (cargo feature
//! `testing`): [`FakeVcpu`] keeps registers, MSRs, segments and debug state
//! in memory, records the exceptions injected into it, counts register
//! accesses, and fails the operations it is told to, as a broken ioctl of
//! the KVM backend would.
//!
//! ```
//! use wasmvisor_exit::testing::{FakeOp, FakeVcpu};
//! use wasmvisor_exit::{Reg, VcpuAccess};
//!
//! let mut vcpu = FakeVcpu::new()
//!     .with_reg(Reg::Rax, 0x42)
//!     .failing(FakeOp::GetControlReg);
//! assert_eq!(vcpu.get_reg(Reg::Rax), Ok(0x42));
//! assert_eq!(vcpu.get_reg(Reg::Rbx), Ok(0));
//! assert_eq!(
//!     vcpu.get_reg(Reg::Cr3).unwrap_err().to_string(),
//!     "KVM_GET_SREGS failed: injected failure"
//! );
//! assert_eq!(vcpu.reads, 3);
//! ```

use std::collections::{HashMap, HashSet};

use crate::{
    DebugState, Direction, Exception, ExitEvent, ExitKind, IoExit, Reg, Segment, SegmentReg,
    VcpuAccess, VcpuAccessError,
};

/// The reason of every failure a [`FakeVcpu`] is told to produce.
pub const INJECTED_FAILURE: &str = "injected failure";

/// An operation of [`VcpuAccess`] that a [`FakeVcpu`] can be told to fail.
/// Register accesses are split as the KVM backend splits them: general
/// registers (RIP and RFLAGS included) arrive with every exit, control
/// registers and EFER cost an ioctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeOp {
    /// [`VcpuAccess::get_reg`] of a general register ([`Reg::is_general`]).
    GetGeneralReg,
    /// [`VcpuAccess::set_reg`] of a general register.
    SetGeneralReg,
    /// [`VcpuAccess::get_reg`] of a control register or EFER.
    GetControlReg,
    /// [`VcpuAccess::set_reg`] of a control register or EFER.
    SetControlReg,
    /// [`VcpuAccess::inject_exception`].
    InjectException,
    /// [`VcpuAccess::host_rdmsr`].
    HostRdmsr,
    /// [`VcpuAccess::host_wrmsr`].
    HostWrmsr,
    /// [`VcpuAccess::get_segment`].
    GetSegment,
    /// [`VcpuAccess::set_segment`].
    SetSegment,
    /// [`VcpuAccess::set_debug_state`].
    SetDebugState,
}

impl FakeOp {
    /// Every operation, in the trait's order.
    pub const ALL: [FakeOp; 10] = [
        FakeOp::GetGeneralReg,
        FakeOp::SetGeneralReg,
        FakeOp::GetControlReg,
        FakeOp::SetControlReg,
        FakeOp::InjectException,
        FakeOp::HostRdmsr,
        FakeOp::HostWrmsr,
        FakeOp::GetSegment,
        FakeOp::SetSegment,
        FakeOp::SetDebugState,
    ];

    /// The KVM ioctl that the operation's failure names (the `op` of the
    /// [`VcpuAccessError`]).
    pub fn ioctl(self) -> &'static str {
        match self {
            FakeOp::GetGeneralReg => "KVM_GET_REGS",
            FakeOp::SetGeneralReg => "KVM_SET_REGS",
            FakeOp::GetControlReg | FakeOp::GetSegment => "KVM_GET_SREGS",
            FakeOp::SetControlReg | FakeOp::SetSegment => "KVM_SET_SREGS",
            FakeOp::InjectException => "KVM_SET_VCPU_EVENTS",
            FakeOp::HostRdmsr => "KVM_GET_MSRS",
            FakeOp::HostWrmsr => "KVM_SET_MSRS",
            FakeOp::SetDebugState => "KVM_SET_GUEST_DEBUG",
        }
    }

    /// The error a failing operation returns.
    pub fn error(self) -> VcpuAccessError {
        VcpuAccessError {
            op: self.ioctl(),
            reason: INJECTED_FAILURE.into(),
        }
    }
}

/// A vCPU held in memory. Every field is public so that a test can set
/// up, and then inspect, what apply, the default handler or a policy did;
/// the `with_*` builders and [`FakeVcpu::failing`] set it up in one
/// expression. [`FakeVcpu::default`] is vCPU 0 with every register 0, no
/// MSR known, default segments and debug state, and nothing failing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeVcpu {
    /// What [`VcpuAccess::index`] returns.
    pub index: u32,
    /// Register values (general, RIP, RFLAGS, control registers, EFER); a
    /// register missing here reads as 0.
    pub regs: HashMap<Reg, u64>,
    /// Exceptions injected, in order.
    pub injected: Vec<Exception>,
    /// MSRs the "hypervisor" knows, for `host_rdmsr` / `host_wrmsr`: an
    /// MSR missing here reads as `None` and refuses writes (`false`).
    pub msrs: HashMap<u32, u64>,
    /// Segment registers, indexed by `SegmentReg as usize`.
    pub segments: [Segment; 8],
    /// The debug state ([`VcpuAccess::debug_state`]).
    pub debug: DebugState,
    /// Calls of [`VcpuAccess::get_reg`], failed ones included.
    pub reads: usize,
    /// Calls of [`VcpuAccess::set_reg`], failed ones included.
    pub set_calls: usize,
    /// Operations that fail with [`FakeOp::error`] and change nothing.
    pub failing: HashSet<FakeOp>,
}

impl FakeVcpu {
    /// Same as [`FakeVcpu::default`].
    pub fn new() -> FakeVcpu {
        FakeVcpu::default()
    }

    /// Sets the vCPU's index.
    #[must_use]
    pub fn with_index(mut self, index: u32) -> FakeVcpu {
        self.index = index;
        self
    }

    /// Sets a register.
    #[must_use]
    pub fn with_reg(mut self, reg: Reg, value: u64) -> FakeVcpu {
        self.regs.insert(reg, value);
        self
    }

    /// Makes an MSR known, with a value.
    #[must_use]
    pub fn with_msr(mut self, index: u32, value: u64) -> FakeVcpu {
        self.msrs.insert(index, value);
        self
    }

    /// Sets a segment register.
    #[must_use]
    pub fn with_segment(mut self, s: SegmentReg, value: Segment) -> FakeVcpu {
        self.segments[s as usize] = value;
        self
    }

    /// Sets the debug state.
    #[must_use]
    pub fn with_debug(mut self, debug: DebugState) -> FakeVcpu {
        self.debug = debug;
        self
    }

    /// Makes `op` fail from now on, like a broken ioctl.
    #[must_use]
    pub fn failing(mut self, op: FakeOp) -> FakeVcpu {
        self.failing.insert(op);
        self
    }

    /// A register's value, 0 if never set (no call counted, no failure).
    pub fn reg(&self, reg: Reg) -> u64 {
        self.regs.get(&reg).copied().unwrap_or(0)
    }

    fn check(&self, op: FakeOp) -> Result<(), VcpuAccessError> {
        if self.failing.contains(&op) {
            Err(op.error())
        } else {
            Ok(())
        }
    }
}

impl VcpuAccess for FakeVcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn get_reg(&mut self, reg: Reg) -> Result<u64, VcpuAccessError> {
        self.reads += 1;
        self.check(if reg.is_general() {
            FakeOp::GetGeneralReg
        } else {
            FakeOp::GetControlReg
        })?;
        Ok(self.reg(reg))
    }

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), VcpuAccessError> {
        self.set_calls += 1;
        self.check(if reg.is_general() {
            FakeOp::SetGeneralReg
        } else {
            FakeOp::SetControlReg
        })?;
        self.regs.insert(reg, value);
        Ok(())
    }

    fn inject_exception(&mut self, exception: Exception) -> Result<(), VcpuAccessError> {
        self.check(FakeOp::InjectException)?;
        self.injected.push(exception);
        Ok(())
    }

    fn host_rdmsr(&mut self, index: u32) -> Result<Option<u64>, VcpuAccessError> {
        self.check(FakeOp::HostRdmsr)?;
        Ok(self.msrs.get(&index).copied())
    }

    fn host_wrmsr(&mut self, index: u32, value: u64) -> Result<bool, VcpuAccessError> {
        self.check(FakeOp::HostWrmsr)?;
        Ok(match self.msrs.get_mut(&index) {
            Some(v) => {
                *v = value;
                true
            }
            None => false,
        })
    }

    fn get_segment(&mut self, s: SegmentReg) -> Result<Segment, VcpuAccessError> {
        self.check(FakeOp::GetSegment)?;
        Ok(self.segments[s as usize])
    }

    fn set_segment(&mut self, s: SegmentReg, v: Segment) -> Result<(), VcpuAccessError> {
        self.check(FakeOp::SetSegment)?;
        self.segments[s as usize] = v;
        Ok(())
    }

    fn debug_state(&self) -> DebugState {
        self.debug
    }

    fn set_debug_state(&mut self, d: DebugState) -> Result<(), VcpuAccessError> {
        self.check(FakeOp::SetDebugState)?;
        self.debug = d;
        Ok(())
    }
}

/// A port I/O exit of `size` bytes on vCPU 0 at RIP 0x1000: what most
/// tests of dispatch, devices and policies start from.
pub fn io_exit(port: u16, size: u8, direction: Direction, data: u32) -> ExitEvent {
    ExitEvent {
        vcpu: 0,
        seq: 1,
        rip: 0x1000,
        kind: ExitKind::Io(IoExit {
            port,
            size,
            direction,
            data,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HwBreakpoint, HwBreakpointKind};

    #[test]
    fn default_is_vcpu_zero_with_zero_registers_and_nothing_failing() {
        let mut vcpu = FakeVcpu::new();
        assert_eq!(vcpu, FakeVcpu::default());
        assert_eq!(vcpu.index(), 0);
        for reg in [
            Reg::Rax,
            Reg::Rip,
            Reg::Rflags,
            Reg::Cr0,
            Reg::Cr3,
            Reg::Efer,
        ] {
            assert_eq!(vcpu.get_reg(reg), Ok(0));
        }
        assert_eq!(vcpu.reads, 6);
        assert_eq!(vcpu.host_rdmsr(0x174), Ok(None));
        assert_eq!(vcpu.get_segment(SegmentReg::Cs), Ok(Segment::default()));
        assert_eq!(vcpu.debug_state(), DebugState::default());
        assert!(vcpu.injected.is_empty());
        assert_eq!(vcpu.set_calls, 0);
    }

    #[test]
    fn registers_are_kept_and_accesses_counted() {
        let mut vcpu = FakeVcpu::new()
            .with_index(3)
            .with_reg(Reg::Rip, 0x8000)
            .with_reg(Reg::Cr3, 0x1000);
        assert_eq!(vcpu.index(), 3);
        assert_eq!(vcpu.get_reg(Reg::Rip), Ok(0x8000));
        assert_eq!(vcpu.get_reg(Reg::Cr3), Ok(0x1000));
        vcpu.set_reg(Reg::Rflags, 0x202).unwrap();
        vcpu.set_reg(Reg::Efer, 0x500).unwrap();
        vcpu.set_reg(Reg::Rip, 0x8002).unwrap();
        assert_eq!(vcpu.get_reg(Reg::Rflags), Ok(0x202));
        assert_eq!(vcpu.reg(Reg::Efer), 0x500);
        assert_eq!(vcpu.regs[&Reg::Rip], 0x8002);
        assert_eq!((vcpu.reads, vcpu.set_calls), (3, 3));
    }

    const UD: Exception = Exception {
        vector: 6,
        error_code: None,
    };

    #[test]
    fn exceptions_are_recorded_in_order() {
        let mut vcpu = FakeVcpu::new();
        vcpu.inject_exception(Exception::GP).unwrap();
        vcpu.inject_exception(UD).unwrap();
        assert_eq!(vcpu.injected, vec![Exception::GP, UD]);
    }

    #[test]
    fn only_known_msrs_read_and_write() {
        let mut vcpu = FakeVcpu::new().with_msr(0x174, 0x10);
        assert_eq!(vcpu.host_rdmsr(0x174), Ok(Some(0x10)));
        assert_eq!(vcpu.host_wrmsr(0x174, 0x20), Ok(true));
        assert_eq!(vcpu.msrs[&0x174], 0x20);
        assert_eq!(vcpu.host_rdmsr(0x175), Ok(None));
        assert_eq!(vcpu.host_wrmsr(0x175, 1), Ok(false));
        assert!(!vcpu.msrs.contains_key(&0x175));
    }

    #[test]
    fn segments_and_debug_state_are_kept() {
        let cs = Segment {
            selector: 0x10,
            limit: 0xffff_ffff,
            attributes: 0xa09b,
            ..Segment::default()
        };
        let mut vcpu = FakeVcpu::new().with_segment(SegmentReg::Cs, cs);
        assert_eq!(vcpu.get_segment(SegmentReg::Cs), Ok(cs));
        assert_eq!(vcpu.get_segment(SegmentReg::Ldtr), Ok(Segment::default()));
        vcpu.set_segment(SegmentReg::Ldtr, cs).unwrap();
        assert_eq!(vcpu.segments[SegmentReg::Ldtr as usize], cs);

        let mut debug = DebugState::default();
        debug.add(HwBreakpoint {
            kind: HwBreakpointKind::Execute,
            gva: 0x8000,
            len: 1,
        });
        let mut vcpu = FakeVcpu::new().with_debug(debug);
        assert_eq!(vcpu.debug_state(), debug);
        vcpu.set_debug_state(DebugState::default()).unwrap();
        assert_eq!(vcpu.debug, DebugState::default());
    }

    #[test]
    fn failing_operations_name_their_ioctl_and_change_nothing() {
        let mut vcpu = FakeVcpu::new()
            .with_reg(Reg::Rax, 0x42)
            .with_reg(Reg::Cr0, 1)
            .with_msr(0x10, 5)
            .failing(FakeOp::GetControlReg);
        assert_eq!(vcpu.get_reg(Reg::Rax), Ok(0x42));
        let err = vcpu.get_reg(Reg::Cr0).unwrap_err();
        assert_eq!(err.to_string(), "KVM_GET_SREGS failed: injected failure");
        assert_eq!(
            vcpu.get_reg(Reg::Efer).unwrap_err(),
            FakeOp::GetControlReg.error()
        );
        assert_eq!(vcpu.reads, 3);
        // Writing a control register is another operation.
        vcpu.set_reg(Reg::Cr0, 3).unwrap();
        assert_eq!(vcpu.reg(Reg::Cr0), 3);

        let ops: Vec<FakeOp> = FakeOp::ALL
            .into_iter()
            .filter(|op| !matches!(op, FakeOp::GetGeneralReg | FakeOp::GetControlReg))
            .collect();
        let mut broken = ops
            .iter()
            .fold(vcpu.clone(), |v, op| v.failing(*op))
            .failing(FakeOp::GetGeneralReg);
        let before = broken.clone();
        fn fails<T: std::fmt::Debug>(r: Result<T, VcpuAccessError>, op: FakeOp) {
            assert_eq!(r.unwrap_err(), op.error());
        }
        fails(broken.get_reg(Reg::Rax), FakeOp::GetGeneralReg);
        fails(broken.set_reg(Reg::Rax, 1), FakeOp::SetGeneralReg);
        fails(broken.set_reg(Reg::Cr4, 1), FakeOp::SetControlReg);
        fails(
            broken.inject_exception(Exception::GP),
            FakeOp::InjectException,
        );
        fails(broken.host_rdmsr(0x10), FakeOp::HostRdmsr);
        fails(broken.host_wrmsr(0x10, 6), FakeOp::HostWrmsr);
        fails(broken.get_segment(SegmentReg::Ss), FakeOp::GetSegment);
        fails(
            broken.set_segment(SegmentReg::Ss, Segment::default()),
            FakeOp::SetSegment,
        );
        let step = DebugState {
            step_once: true,
            ..DebugState::default()
        };
        fails(broken.set_debug_state(step), FakeOp::SetDebugState);
        // Nothing changed but the call counters.
        assert_eq!(
            (
                broken.reads - before.reads,
                broken.set_calls - before.set_calls
            ),
            (1, 2)
        );
        broken.reads = before.reads;
        broken.set_calls = before.set_calls;
        assert_eq!(broken, before);
    }

    #[test]
    fn every_failing_op_names_a_kvm_ioctl() {
        for op in FakeOp::ALL {
            let e = op.error();
            assert!(e.op.starts_with("KVM_"), "{op:?}");
            assert_eq!(e.reason, INJECTED_FAILURE);
        }
    }
}
