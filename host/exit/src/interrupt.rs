//! Interrupt lines that device models drive: the native UART and policies
//! that model devices (`set-irq-line`). The KVM layer implements
//! [`InterruptLines`] over `KVM_IRQ_LINE` on the in-kernel PIC and IOAPIC.

use std::sync::{Arc, Mutex, PoisonError};

/// Lines 0..=`MAX_IRQ_LINE`: the IOAPIC's 24 inputs (0-15 also reach the
/// PIC).
pub const MAX_IRQ_LINE: u32 = 23;

/// Raises and lowers interrupt lines of the VM's interrupt controllers.
pub trait InterruptLines: Send + Sync {
    /// Sets `line` to `level`; an edge-triggered input interrupts on a rise.
    fn set_level(&self, line: u32, level: bool) -> Result<(), String>;
}

/// A set of interrupt lines, e.g. the lines an operator let a policy drive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IrqSet(u32);

impl IrqSet {
    /// No line.
    pub const EMPTY: IrqSet = IrqSet(0);

    /// Adds `first..=last`; `None` if a line is above [`MAX_IRQ_LINE`] or
    /// the range is backwards.
    pub fn with_range(self, first: u32, last: u32) -> Option<IrqSet> {
        if first > last || last > MAX_IRQ_LINE {
            return None;
        }
        let bits = (first..=last).fold(0u32, |b, l| b | (1 << l));
        Some(IrqSet(self.0 | bits))
    }

    /// True if `line` is in the set.
    pub fn contains(self, line: u32) -> bool {
        line <= MAX_IRQ_LINE && self.0 & (1 << line) != 0
    }

    /// True if the set holds no line.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// What a policy instance may do with interrupt lines: the VM's lines, if
/// it has an interrupt controller, and the lines granted to the policy.
#[derive(Clone, Default)]
pub struct IrqAccess {
    pub lines: Option<Arc<dyn InterruptLines>>,
    pub granted: IrqSet,
}

impl std::fmt::Debug for IrqAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrqAccess")
            .field("controller", &self.lines.is_some())
            .field("granted", &self.granted)
            .finish()
    }
}

/// Interrupt lines that only record their levels, for tests.
#[derive(Debug, Default)]
pub struct RecordedLines {
    /// Every `(line, level)` set, in order.
    pub calls: Mutex<Vec<(u32, bool)>>,
}

impl InterruptLines for RecordedLines {
    fn set_level(&self, line: u32, level: bool) -> Result<(), String> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((line, level));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_build_sets_and_bad_ranges_are_refused() {
        let s = IrqSet::EMPTY
            .with_range(4, 4)
            .unwrap()
            .with_range(10, 11)
            .unwrap();
        assert!(s.contains(4) && s.contains(10) && s.contains(11));
        assert!(!s.contains(3) && !s.contains(12) && !s.contains(99));
        assert!(IrqSet::EMPTY.is_empty() && !s.is_empty());
        assert_eq!(IrqSet::EMPTY.with_range(5, 4), None);
        assert_eq!(IrqSet::EMPTY.with_range(0, 24), None);
        assert!(IrqSet::EMPTY
            .with_range(0, MAX_IRQ_LINE)
            .unwrap()
            .contains(23));
    }
}
