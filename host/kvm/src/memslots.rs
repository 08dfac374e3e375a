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

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use wasmvisor_exit::{GpaRange, MemoryProtector, ProtectError, Protection, ProtectionMap, Run};

struct Slots {
    map: ProtectionMap,
    /// The runs currently installed, with their slot numbers.
    installed: HashMap<(u64, u64, Option<Protection>), u32>,
    free: Vec<u32>,
    next: u32,
    /// Device memory slots, by slot number.
    devices: HashMap<u32, DeviceSlot>,
    /// KVM logs the pages the guest writes (`start_dirty_log`).
    logging: bool,
    /// RAM runs whose slot was deleted while logging: KVM's log for them
    /// is gone, so all their pages count as written.
    lost: Vec<(u64, u64)>,
}

impl Slots {
    /// A free slot number: RAM runs and device memory share them.
    fn take_slot(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }
}

/// The memslot layout of one VM; shared by its vCPU threads.
pub struct MemSlots {
    fd: Arc<VmFd>,
    host_base: u64,
    ram_size: u64,
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
            ram_size,
            slots: Mutex::new(Slots {
                map: ProtectionMap::new(ram_size),
                installed,
                free: Vec::new(),
                next: 1,
                devices: HashMap::new(),
                logging: false,
                lost: Vec::new(),
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

    fn set_region(
        &self,
        slot: u32,
        run: &Run,
        size: u64,
        logging: bool,
    ) -> Result<(), ProtectError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: match (run.mode, logging) {
                (Some(Protection::WriteProtect), _) => KVM_MEM_READONLY,
                (_, true) => KVM_MEM_LOG_DIRTY_PAGES,
                _ => 0,
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
            self.set_region(slot, &run, 0, false)?;
            s.free.push(slot);
            if s.logging {
                s.lost.push((run.base, run.len));
            }
        }
        for (key, run) in wanted {
            if s.installed.contains_key(&key) {
                continue;
            }
            let slot = s.take_slot();
            self.set_region(slot, &run, run.len, s.logging)?;
            s.installed.insert(key, slot);
        }
        Ok(())
    }
}

impl MemSlots {
    /// Turns on KVM's dirty log on every RAM slot and forgets what was
    /// logged so far: from now on [`MemSlots::take_dirty_pages`] reports
    /// the pages the guest writes.
    pub fn start_dirty_log(&self) -> Result<(), ProtectError> {
        let mut s = self.lock();
        if !s.logging {
            s.logging = true;
            let runs: Vec<(Run, u32)> = s
                .installed
                .iter()
                .map(|(k, &slot)| {
                    let run = Run {
                        base: k.0,
                        len: k.1,
                        mode: k.2,
                    };
                    (run, slot)
                })
                .collect();
            for (run, slot) in runs {
                self.set_region(slot, &run, run.len, true)?;
            }
        }
        drop(s);
        self.take_dirty_pages().map(|_| ())
    }

    /// The RAM pages (page numbers, ascending) the guest wrote since the
    /// last call, read and cleared from KVM's log. Writes by the host do
    /// not appear here (they are in the RAM mapping's own bitmap).
    pub fn take_dirty_pages(&self) -> Result<Vec<u64>, ProtectError> {
        let mut s = self.lock();
        if !s.logging {
            return Err(ProtectError::Backend("the dirty log is off".into()));
        }
        let mut pages = Vec::new();
        for (key, &slot) in &s.installed {
            if key.2 == Some(Protection::WriteProtect) {
                continue; // read-only: the guest cannot write it
            }
            let bitmap = self
                .fd
                .get_dirty_log(slot, key.1 as usize)
                .map_err(|e| ProtectError::Backend(format!("KVM_GET_DIRTY_LOG: {e}")))?;
            let first = key.0 / PAGE;
            for (w, word) in bitmap.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let bit = u64::from(bits.trailing_zeros());
                    pages.push(first + w as u64 * 64 + bit);
                    bits &= bits - 1;
                }
            }
        }
        for (base, len) in std::mem::take(&mut s.lost) {
            pages.extend(base / PAGE..(base + len).div_ceil(PAGE));
        }
        pages.sort_unstable();
        pages.dedup();
        Ok(pages)
    }
}

const PAGE: u64 = 4096;

/// Device memory mapped into the guest outside RAM (a passthrough BAR):
/// `size` bytes at `gpa` are the VMM's memory at `host_addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceSlot {
    /// The guest-physical address.
    pub gpa: u64,
    /// Bytes, whole pages.
    pub size: u64,
    /// Where the VMM has the memory mapped.
    pub host_addr: u64,
}

impl MemSlots {
    /// Maps device memory into the guest as a memslot of its own, so guest
    /// accesses to it no longer exit; returns the slot.
    ///
    /// The caller keeps `host_addr..host_addr + size` mapped until it has
    /// removed the slot with [`MemSlots::unmap_device`]; the range must
    /// not overlap RAM or another slot.
    pub fn map_device(&self, device: DeviceSlot) -> Result<u32, ProtectError> {
        let ram = self.ram_size;
        let page_aligned = [device.gpa, device.size, device.host_addr]
            .iter()
            .all(|v| v.is_multiple_of(4096));
        if !page_aligned || device.size == 0 || device.gpa < ram {
            return Err(ProtectError::Backend(format!(
                "device memory of {:#x} bytes at GPA {:#x} must be whole pages above RAM",
                device.size, device.gpa
            )));
        }
        let mut s = self.lock();
        let slot = s.take_slot();
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: device.gpa,
            memory_size: device.size,
            userspace_addr: device.host_addr,
        };
        // SAFETY: the caller keeps `host_addr..+size` mapped until the slot
        // is deleted (the contract above); KVM checks that it is mapped
        // user memory and that the slot overlaps no other.
        let result = unsafe { self.fd.set_user_memory_region(region) };
        if let Err(e) = result {
            s.free.push(slot);
            return Err(ProtectError::Backend(e.to_string()));
        }
        s.devices.insert(slot, device);
        Ok(slot)
    }

    /// Removes a slot made by [`MemSlots::map_device`]; guest accesses to
    /// that range exit again.
    pub fn unmap_device(&self, slot: u32) -> Result<(), ProtectError> {
        let mut s = self.lock();
        let Some(device) = s.devices.remove(&slot) else {
            return Ok(());
        };
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: device.gpa,
            memory_size: 0,
            userspace_addr: device.host_addr,
        };
        // SAFETY: a size of 0 deletes the slot; no memory is touched.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(|e| ProtectError::Backend(e.to_string()))?;
        s.free.push(slot);
        Ok(())
    }

    /// The device memory mapped now.
    pub fn device_slots(&self) -> Vec<DeviceSlot> {
        self.lock().devices.values().copied().collect()
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
