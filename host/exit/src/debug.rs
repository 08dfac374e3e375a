//! Guest debugging state: hardware breakpoints (DR0-3) and single-step,
//! which the KVM layer programs with `KVM_SET_GUEST_DEBUG`.

/// What a hardware breakpoint watches (mirrors WIT `breakpoint-kind`,
/// without `software`, which the host refuses on this backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HwBreakpointKind {
    Execute,
    Write,
    ReadWrite,
}

/// One hardware breakpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwBreakpoint {
    pub kind: HwBreakpointKind,
    pub gva: u64,
    /// 1 for execute; 1, 2, 4 or 8 for data.
    pub len: u8,
}

/// The debug state of one vCPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DebugState {
    pub hw: [Option<HwBreakpoint>; 4],
    /// Single-step until turned off (the `single-step` import).
    pub step_always: bool,
    /// Single-step one instruction (the `step` action); cleared by the next
    /// debug exit's `resume`.
    pub step_once: bool,
    /// An execute breakpoint disarmed to step over it: the vCPU backend
    /// single-steps one instruction, puts it back in its slot, and hides
    /// that step from policies unless they asked to step too. (Stepping
    /// over with RFLAGS.RF is not honoured by every KVM backend.)
    pub rearm: Option<(u8, HwBreakpoint)>,
    /// Slots an attached debugger (gdb) holds, bit `i` for DR`i`: policies
    /// can neither take nor clear them, and their exits go to the
    /// debugger (docs/gdb.md).
    pub debugger_slots: u8,
    /// The debugger single-steps this vCPU.
    pub debugger_step: bool,
    /// The debugger has int3 breakpoints in guest memory: `#BP` exits to
    /// the host (`KVM_GUESTDBG_USE_SW_BP`) where the backend traps it.
    pub debugger_int3: bool,
}

impl DebugState {
    /// True if KVM must single-step.
    pub fn single_step(&self) -> bool {
        self.step_always || self.step_once || self.rearm.is_some() || self.debugger_step
    }

    /// True if anything needs `KVM_SET_GUEST_DEBUG` enabled.
    pub fn enabled(&self) -> bool {
        self.single_step() || self.hw.iter().any(Option::is_some) || self.debugger_int3
    }

    /// Whether the debugger holds slot `slot`.
    pub fn debugger_holds(&self, slot: u8) -> bool {
        slot < 4 && self.debugger_slots & (1 << slot) != 0
    }

    /// Places a breakpoint in the first free slot the debugger does not
    /// hold; `None` if there is none. A breakpoint already set (outside
    /// the debugger's slots) is returned in its slot.
    pub fn add(&mut self, bp: HwBreakpoint) -> Option<u8> {
        let ours = |i: &usize| !self.debugger_holds(*i as u8);
        if let Some(i) = (0..4).filter(ours).find(|&i| self.hw[i] == Some(bp)) {
            return Some(i as u8);
        }
        let i = (0..4).filter(ours).find(|&i| self.hw[i].is_none())?;
        self.hw[i] = Some(bp);
        Some(i as u8)
    }

    /// The DR7 value for these breakpoints (local enables, R/W and LEN).
    pub fn dr7(&self) -> u64 {
        let mut dr7 = 0u64;
        for (i, bp) in self.hw.iter().enumerate() {
            let Some(bp) = bp else { continue };
            let rw: u64 = match bp.kind {
                HwBreakpointKind::Execute => 0b00,
                HwBreakpointKind::Write => 0b01,
                HwBreakpointKind::ReadWrite => 0b11,
            };
            let len: u64 = match (bp.kind, bp.len) {
                (HwBreakpointKind::Execute, _) | (_, 1) => 0b00,
                (_, 2) => 0b01,
                (_, 8) => 0b10,
                _ => 0b11,
            };
            dr7 |= 1 << (2 * i);
            dr7 |= (rw | (len << 2)) << (16 + 4 * i);
        }
        dr7
    }

    /// The execute breakpoint at `rip`, if any (for backends that do not
    /// report the slot in DR6).
    pub fn execute_slot_at(&self, rip: u64) -> Option<u8> {
        self.hw
            .iter()
            .position(
                |s| matches!(s, Some(bp) if bp.kind == HwBreakpointKind::Execute && bp.gva == rip),
            )
            .map(|i| i as u8)
    }
}

/// Segment and descriptor-table registers (mirrors WIT `segment-reg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentReg {
    Cs,
    Ds,
    Es,
    Fs,
    Gs,
    Ss,
    Tr,
    Ldtr,
}

/// A segment register's hidden state (mirrors WIT `segment`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    /// Bits 0-3 type, 4 S, 5-6 DPL, 7 P, 12 AVL, 13 L, 14 D/B, 15 G.
    pub attributes: u16,
    pub unusable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr7_encodes_enables_kinds_and_lengths() {
        let mut d = DebugState::default();
        assert_eq!(
            d.add(HwBreakpoint {
                kind: HwBreakpointKind::Execute,
                gva: 0x1000,
                len: 1
            }),
            Some(0)
        );
        assert_eq!(
            d.add(HwBreakpoint {
                kind: HwBreakpointKind::Write,
                gva: 0x2000,
                len: 4
            }),
            Some(1)
        );
        // slot 0: L0, RW=00, LEN=00; slot 1: L1, RW=01, LEN=11.
        assert_eq!(d.dr7(), 0b1 | 0b100 | (0b1101 << 20));
        assert_eq!(d.execute_slot_at(0x1000), Some(0));
        assert_eq!(d.execute_slot_at(0x2000), None);
        for i in 0..2 {
            d.add(HwBreakpoint {
                kind: HwBreakpointKind::ReadWrite,
                gva: 0x3000 + i,
                len: 8,
            });
        }
        assert!(d
            .add(HwBreakpoint {
                kind: HwBreakpointKind::Execute,
                gva: 0x9999,
                len: 1
            })
            .is_none());
        assert!(d.enabled() && !d.single_step());
    }

    #[test]
    fn debugger_slots_are_skipped_by_add_and_step_with_the_debugger() {
        let bp = |gva| HwBreakpoint {
            kind: HwBreakpointKind::Execute,
            gva,
            len: 1,
        };
        let mut d = DebugState {
            debugger_slots: 0b0101,
            ..DebugState::default()
        };
        d.hw[0] = Some(bp(0x1000));
        // The debugger's own breakpoint is not the policy's to share.
        assert_eq!(d.add(bp(0x1000)), Some(1));
        assert_eq!(d.add(bp(0x2000)), Some(3));
        assert_eq!(d.add(bp(0x3000)), None, "slots 0 and 2 are the debugger's");
        assert!(d.debugger_holds(2) && !d.debugger_holds(1) && !d.debugger_holds(9));
        assert!(!d.single_step());
        d.debugger_step = true;
        assert!(d.single_step() && d.enabled());
        let int3 = DebugState {
            debugger_int3: true,
            ..DebugState::default()
        };
        assert!(int3.enabled() && !int3.single_step());
    }
}
