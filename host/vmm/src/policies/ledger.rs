//! Which pages each policy protected, so that swapping a policy out takes
//! its page watches with it.
//!
//! Protections are VM-wide (one memslot layout), but a policy that is
//! unloaded or replaced must not leave pages trapping on behalf of a
//! policy that is gone. Every policy therefore changes protections through
//! its own [`OwnedProtector`], which passes the change on and keeps a
//! ledger of the pages it protected.

use std::sync::{Arc, Mutex, PoisonError};

use wasmvisor_exit::{GpaRange, MemoryProtector, ProtectError, Protection, ProtectionMap};

/// One policy's handle on the VM's page protections.
pub(crate) struct OwnedProtector {
    vm: Arc<dyn MemoryProtector>,
    owned: Mutex<ProtectionMap>,
}

impl OwnedProtector {
    pub fn new(vm: Arc<dyn MemoryProtector>, ram_size: u64) -> OwnedProtector {
        OwnedProtector {
            vm,
            owned: Mutex::new(ProtectionMap::new(ram_size)),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, ProtectionMap> {
        self.owned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes every protection this policy set and still holds. A page
    /// another policy protected too loses its protection as well: the
    /// layout keeps one mode per page, not one per policy.
    pub fn release(&self) -> Result<(), ProtectError> {
        let runs = self.ledger().runs();
        for run in runs.iter().filter(|r| r.mode.is_some()) {
            let range = GpaRange {
                base: run.base,
                len: run.len,
            };
            self.vm.unprotect(range)?;
            self.ledger().unprotect(range)?;
        }
        Ok(())
    }

    /// Pages this policy holds protected, in bytes.
    pub fn protected_bytes(&self) -> u64 {
        self.ledger()
            .runs()
            .iter()
            .filter(|r| r.mode.is_some())
            .map(|r| r.len)
            .sum()
    }
}

impl MemoryProtector for OwnedProtector {
    fn protect(&self, range: GpaRange, mode: Protection) -> Result<(), ProtectError> {
        self.vm.protect(range, mode)?;
        self.ledger().protect(range, mode)
    }

    fn unprotect(&self, range: GpaRange) -> Result<(), ProtectError> {
        self.vm.unprotect(range)?;
        self.ledger().unprotect(range)
    }

    fn lookup(&self, gpa: u64) -> Option<Protection> {
        self.vm.lookup(gpa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 64 << 12;

    fn range(page: u64, pages: u64) -> GpaRange {
        GpaRange {
            base: page << 12,
            len: pages << 12,
        }
    }

    #[test]
    fn release_takes_back_only_what_this_policy_protected() {
        let vm: Arc<Mutex<ProtectionMap>> = Arc::new(Mutex::new(ProtectionMap::new(RAM)));
        let a = OwnedProtector::new(vm.clone(), RAM);
        let b = OwnedProtector::new(vm.clone(), RAM);
        a.protect(range(1, 3), Protection::WriteProtect).unwrap();
        a.unprotect(range(2, 1)).unwrap();
        b.protect(range(10, 1), Protection::NoAccess).unwrap();
        assert_eq!(a.protected_bytes(), 2 << 12);
        a.release().unwrap();
        assert_eq!(vm.lookup(1 << 12), None);
        assert_eq!(vm.lookup(3 << 12), None);
        assert_eq!(vm.lookup(10 << 12), Some(Protection::NoAccess));
        assert_eq!(a.protected_bytes(), 0);
        assert_eq!(b.protected_bytes(), 1 << 12);
    }

    #[test]
    fn a_refused_change_is_not_recorded() {
        let vm: Arc<Mutex<ProtectionMap>> = Arc::new(Mutex::new(ProtectionMap::new(RAM)));
        let a = OwnedProtector::new(vm, RAM);
        assert!(a.protect(range(100, 1), Protection::WriteProtect).is_err());
        assert_eq!(a.protected_bytes(), 0);
    }
}
