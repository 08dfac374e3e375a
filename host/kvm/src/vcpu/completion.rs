//! Completing an exit: writing the policy's answer back into `kvm_run`.

use wasmvisor_exit::{Completion, Direction, ExitEvent};

use super::{Pending, Vcpu};

impl Vcpu {
    /// Writes bytes into the `kvm_run` page.
    fn kvm_run_write(&mut self, offset: usize, data: &[u8]) {
        let base = self.fd.get_kvm_run() as *mut kvm_bindings::kvm_run as *mut u8;
        // SAFETY: as in `kvm_run_bytes`: the kernel placed the I/O data
        // area inside the mapped `kvm_run` region; we hold `&mut self`, so
        // nothing else reads it while we write.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(offset), data.len()) }
    }

    /// Writes the answer to the current exit (or I/O element) into
    /// `kvm_run`. Returns the event for the next element of a string I/O
    /// exit, if one remains; it must be answered the same way.
    pub fn complete(&mut self, c: &Completion) -> Option<ExitEvent> {
        match self.pending.clone() {
            Pending::None => None,
            Pending::Io {
                direction,
                size,
                count,
                data_offset,
                element,
                ..
            } => {
                if direction == Direction::Read {
                    let value = c.read.unwrap_or(u64::MAX).to_le_bytes();
                    let n = usize::from(size).min(8);
                    let offset = data_offset as usize + element as usize * usize::from(size);
                    self.kvm_run_write(offset, &value[..n]);
                }
                if element + 1 >= count {
                    return None;
                }
                if let Pending::Io { element, .. } = &mut self.pending {
                    *element += 1;
                }
                let kind = self.io_element_kind();
                let rip = self.rip().unwrap_or(0);
                Some(self.next_event(rip, kind))
            }
            Pending::MmioRead { len } => {
                let value = c.read.unwrap_or(u64::MAX).to_le_bytes();
                let run = self.fd.get_kvm_run();
                let n = usize::from(len).min(8);
                // SAFETY: the pending exit is KVM_EXIT_MMIO, so `mmio` is
                // the live union member; `n` is at most its 8-byte buffer.
                unsafe { run.__bindgen_anon_1.mmio.data[..n].copy_from_slice(&value[..n]) };
                None
            }
            Pending::Msr => {
                let run = self.fd.get_kvm_run();
                // The pending exit is KVM_EXIT_X86_RDMSR/WRMSR, so `msr` is
                // the live union member (writing a union field is safe).
                run.__bindgen_anon_1.msr.error = u8::from(c.msr_fault);
                if let Some(v) = c.read {
                    run.__bindgen_anon_1.msr.data = v;
                }
                None
            }
        }
    }
}
