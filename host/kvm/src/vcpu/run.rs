//! `KVM_RUN`: running the guest and turning the exit into an [`ExitEvent`].

use std::fmt;

use wasmvisor_exit::{Direction, ExitEvent, ExitKind, IoExit, MmioExit, MsrExit, ShutdownReason};

use super::{Pending, Vcpu};
use crate::decode::{self, RawExit};
use crate::KvmError;

/// A guest failure that ends this vCPU: triple fault, internal error or
/// entry failure. Displays as one line naming the vCPU, RIP and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatalExit {
    pub vcpu: u32,
    pub rip: u64,
    pub reason: ShutdownReason,
    pub detail: String,
}

impl fmt::Display for FatalExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.reason {
            ShutdownReason::TripleFault => "shutdown (triple fault)",
            ShutdownReason::InternalError => "KVM internal error",
            ShutdownReason::EntryFailure => "VM entry failed",
        };
        write!(f, "vcpu {} at rip {:#x}: {what}", self.vcpu, self.rip)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// The result of one `KVM_RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// An exit to answer; call [`Vcpu::complete`] afterwards.
    Exit(ExitEvent),
    /// The guest cannot go on.
    Fatal(FatalExit),
    /// `KVM_RUN` was interrupted (a kick, or a signal); nothing is owed.
    Interrupted,
}

impl Vcpu {
    /// Runs the guest until the next exit.
    pub fn run(&mut self) -> Result<RunOutcome, KvmError> {
        self.flush()?;
        self.pending = Pending::None;
        self.sregs = None;
        self.regs = None;
        let raw = match self.fd.run() {
            Ok(exit) => RawExit::from(exit),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                return Ok(RunOutcome::Interrupted);
            }
            Err(e) => {
                return Err(KvmError::Ioctl {
                    op: "KVM_RUN",
                    source: e,
                })
            }
        };
        let rip = self.rip()?;
        let kind = match raw {
            RawExit::Io(port, direction) => self.io_exit(port, direction),
            RawExit::Mmio {
                gpa,
                len,
                write,
                data,
            } => {
                let direction = if write {
                    Direction::Write
                } else {
                    self.pending = Pending::MmioRead { len };
                    Direction::Read
                };
                ExitKind::Mmio(MmioExit {
                    gpa,
                    size: len,
                    direction,
                    data,
                })
            }
            RawExit::Msr {
                index,
                direction,
                value,
                reason,
            } => {
                self.pending = Pending::Msr;
                ExitKind::Msr(MsrExit {
                    index,
                    direction,
                    value,
                    reason,
                })
            }
            RawExit::Debug(d) => match self.finish_debug_exit(d, rip)? {
                Some(d) => ExitKind::Debug(d),
                None => return self.run(),
            },
            RawExit::Hlt => ExitKind::Hlt,
            RawExit::Interrupted => return Ok(RunOutcome::Interrupted),
            RawExit::Fatal(reason, detail) => {
                let detail = if reason == ShutdownReason::InternalError {
                    self.internal_error_detail()
                } else {
                    detail
                };
                return Ok(RunOutcome::Fatal(FatalExit {
                    vcpu: self.index,
                    rip,
                    reason,
                    detail,
                }));
            }
        };
        Ok(RunOutcome::Exit(self.next_event(rip, kind)))
    }

    /// Builds the event for the current element of a port I/O exit.
    fn io_exit(&mut self, port: u16, direction: Direction) -> ExitKind {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_IO (checked by kvm-ioctls
        // before it returned VcpuExit::IoIn/IoOut), so `io` is the live
        // member of the union.
        let io = unsafe { run.__bindgen_anon_1.io };
        self.pending = Pending::Io {
            port,
            direction,
            size: io.size,
            count: io.count,
            data_offset: io.data_offset,
            element: 0,
        };
        self.io_element_kind()
    }

    pub(super) fn io_element_kind(&mut self) -> ExitKind {
        let Pending::Io {
            port,
            direction,
            size,
            data_offset,
            element,
            ..
        } = self.pending
        else {
            unreachable!("io_element_kind is only called with a pending I/O exit");
        };
        let data = if direction == Direction::Write {
            let mut buf = [0u8; 4];
            let n = usize::from(size).min(4);
            let offset = data_offset as usize + element as usize * usize::from(size);
            self.kvm_run_bytes(offset, &mut buf[..n]);
            u32::from_le_bytes(buf)
        } else {
            0
        };
        ExitKind::Io(IoExit {
            port,
            size,
            direction,
            data,
        })
    }

    /// Copies bytes out of the `kvm_run` page.
    fn kvm_run_bytes(&mut self, offset: usize, out: &mut [u8]) {
        let base = self.fd.get_kvm_run() as *mut kvm_bindings::kvm_run as *const u8;
        // SAFETY: `offset` comes from the kernel's `io.data_offset` plus an
        // element index bounded by `io.count`; the kernel guarantees the
        // whole data area lies inside the mmap'd `kvm_run` region, which
        // lives as long as the vCPU fd.
        unsafe { std::ptr::copy_nonoverlapping(base.add(offset), out.as_mut_ptr(), out.len()) }
    }

    /// Decodes `kvm_run.internal` into a readable detail, with the
    /// instruction bytes when the emulator reported them.
    fn internal_error_detail(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal`
        // is the live union member.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        decode::internal_error_detail(internal.suberror, internal.ndata, &internal.data)
    }
}
