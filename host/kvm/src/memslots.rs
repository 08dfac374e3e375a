//! Guest RAM as KVM memslots, split and merged to follow page protections.
//!
//! RAM is one host mapping that never changes; only the memslots over it
//! do. Each run of equal protection ([`wasmvisor_exit::ProtectionMap`])
//! is one slot: read-only for write-protected pages, none at all for
//! no-access pages. A change deletes the slots whose run changed and
//! creates the new ones; RAM contents are untouched because the mapping
//! behind the slots is the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use wasmvisor_exit::{GpaRange, MemoryProtector, ProtectError, Protection, ProtectionMap, Run};

struct Slots {
    map: ProtectionMap,
    /// The runs currently installed, with their slot numbers.
    installed: HashMap<(u64, u64, Option<Protection>), u32>,
    free: Vec<u32>,
    next: u32,
}

/// The memslot layout of one VM; shared by its vCPU threads.
pub struct MemSlots {
    fd: Arc<VmFd>,
    host_base: u64,
    slots: Mutex<Slots>,
}

impl MemSlots {
    /// Takes over the single RAM slot 0 that `Vm::new` installed.
    pub(crate) fn new(fd: Arc<VmFd>, host_base: u64, ram_size: u64) -> MemSlots {
        let mut installed = HashMap::new();
        installed.insert((0, ram_size, None), 0);
        MemSlots {
            fd,
            host_base,
            slots: Mutex::new(Slots {
                map: ProtectionMap::new(ram_size),
                installed,
                free: Vec::new(),
                next: 1,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of memslots in use.
    pub fn slot_count(&self) -> usize {
        self.lock().installed.len()
    }

    fn set_region(&self, slot: u32, run: &Run, size: u64) -> Result<(), ProtectError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: if run.mode == Some(Protection::WriteProtect) {
                KVM_MEM_READONLY
            } else {
                0
            },
            guest_phys_addr: run.base,
            memory_size: size,
            userspace_addr: self.host_base + run.base,
        };
        // SAFETY: `userspace_addr..+memory_size` lies inside the guest RAM
        // mapping (`run` is inside `[0, ram_size)` by construction of the
        // protection map), which the VM keeps mapped for its whole life;
        // a size of 0 deletes the slot.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(|e| ProtectError::Backend(e.to_string()))
    }

    /// Installs the slot layout for the map's current runs.
    fn sync(&self, s: &mut Slots) -> Result<(), ProtectError> {
        let runs = s.map.runs();
        let wanted: HashMap<(u64, u64, Option<Protection>), Run> = runs
            .iter()
            .filter(|r| r.mode != Some(Protection::NoAccess))
            .map(|r| ((r.base, r.len, r.mode), *r))
            .collect();
        // Slots cannot overlap: delete the stale ones first.
        let stale: Vec<_> = s
            .installed
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            let slot = s.installed.remove(&key).expect("listed above");
            let run = Run {
                base: key.0,
                len: key.1,
                mode: key.2,
            };
            self.set_region(slot, &run, 0)?;
            s.free.push(slot);
        }
        for (key, run) in wanted {
            if s.installed.contains_key(&key) {
                continue;
            }
            let slot = s.free.pop().unwrap_or_else(|| {
                s.next += 1;
                s.next - 1
            });
            self.set_region(slot, &run, run.len)?;
            s.installed.insert(key, slot);
        }
        Ok(())
    }
}

impl MemoryProtector for MemSlots {
    fn protect(&self, range: GpaRange, mode: Protection) -> Result<(), ProtectError> {
        let mut s = self.lock();
        s.map.protect(range, mode)?;
        self.sync(&mut s)
    }

    fn unprotect(&self, range: GpaRange) -> Result<(), ProtectError> {
        let mut s = self.lock();
        s.map.unprotect(range)?;
        self.sync(&mut s)
    }

    fn lookup(&self, gpa: u64) -> Option<Protection> {
        self.lock().map.lookup(gpa)
    }
}
