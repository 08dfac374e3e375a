//! The host side of WIT interface `host`: what a running policy may ask
//! of wasmvisor. Guest-visible failures are `host-error`s; requests the
//! sandbox forbids, and vCPU backend failures, are traps.

use std::fmt::Write as _;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::bindings::wasmvisor::policy::host;
use crate::bindings::wasmvisor::policy::types::{
    self, GpaRange, HostError, LogLevel, ProtectRequest, Reg,
};
use wasmvisor_exit::{
    translate, Constant, ConstantTarget, DebugState, HwBreakpoint, HwBreakpointKind, PagingState,
    Reg as ExitReg, VcpuAccess, VcpuAccessError, WalkFault,
};

use crate::convert;
use crate::ctx::Ctx;
use crate::tape;

/// Largest guest-memory transfer one import call may make.
pub const MAX_TRANSFER: usize = 64 * 1024;
/// Longest log message kept; the rest is cut.
pub const MAX_LOG_BYTES: usize = 4 * 1024;
/// Longest event payload (`json`) accepted by `emit`.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Longest event kind or counter key.
pub const MAX_KEY_BYTES: usize = 256;
/// Most constant answers one policy may declare.
pub const MAX_CONSTANTS: usize = 64;

/// Result of an import that can fail in a guest-visible way.
type HostResult<T> = wasmtime::Result<Result<T, HostError>>;

impl types::Host for Ctx {}

impl Ctx {
    /// Records a constant answer; only `init` may declare one, and how
    /// many is bounded like everything else a policy hands the host.
    fn declare_constant(&mut self, target: ConstantTarget, value: u64) -> Result<(), HostError> {
        let Some(list) = self.constants.as_mut() else {
            return Err(HostError::Unsupported);
        };
        if list.len() >= MAX_CONSTANTS {
            return Err(HostError::TooLarge);
        }
        list.push(Constant { target, value });
        Ok(())
    }

    /// Runs `f` on the lent vCPU. Outside an exit, or if the vCPU backend
    /// fails, the call traps (the latter is recorded as a host fault).
    fn with_vcpu<T>(
        &mut self,
        op: &str,
        f: impl FnOnce(&mut dyn VcpuAccess) -> Result<T, VcpuAccessError>,
    ) -> wasmtime::Result<T> {
        let Some(vcpu) = self.vcpu.access() else {
            return Err(wasmtime::Error::msg(format!("{op} called outside an exit")));
        };
        f(vcpu).map_err(|fault| {
            let error = wasmtime::Error::msg(fault.to_string());
            self.fault = Some(fault);
            error
        })
    }

    /// The guest's paging state, for page walks.
    fn paging(&mut self, op: &str) -> wasmtime::Result<PagingState> {
        self.with_vcpu(op, |v| {
            Ok(PagingState {
                cr0: v.get_reg(ExitReg::Cr0)?,
                cr3: v.get_reg(ExitReg::Cr3)?,
                cr4: v.get_reg(ExitReg::Cr4)?,
                efer: v.get_reg(ExitReg::Efer)?,
            })
        })
    }

    /// Splits `[gva, gva + len)` at page boundaries and translates each
    /// piece: `(gpa, len)` chunks, or the error the walk met.
    fn virt_chunks(
        &mut self,
        op: &str,
        gva: u64,
        len: usize,
    ) -> wasmtime::Result<Result<Vec<(u64, usize)>, HostError>> {
        let paging = self.paging(op)?;
        let mut chunks = Vec::new();
        let mut at = gva;
        let mut left = len;
        while left > 0 {
            let in_page = (4096 - (at & 0xfff)) as usize;
            let n = in_page.min(left);
            match translate(&self.inst.memory, &paging, at) {
                Ok(t) => {
                    if !self.inst.memory.check_range(GuestAddress(t.gpa), n) {
                        return Ok(Err(HostError::OutOfRange));
                    }
                    chunks.push((t.gpa, n));
                }
                Err(e) => return Ok(Err(walk_error(&e))),
            }
            at = match at.checked_add(n as u64) {
                Some(next) => next,
                None => return Ok(Err(HostError::OutOfRange)),
            };
            left -= n;
        }
        Ok(Ok(chunks))
    }

    /// Changes the lent vCPU's debug state (grant: debug).
    fn update_debug(
        &mut self,
        op: &str,
        f: impl FnOnce(&mut DebugState) -> Result<u8, HostError>,
    ) -> HostResult<u8> {
        if !self.inst.grants.debug {
            return Ok(Err(HostError::NotGranted));
        }
        self.with_vcpu(op, |v| {
            let mut state = v.debug_state();
            match f(&mut state) {
                Ok(slot) => v.set_debug_state(state).map(|()| Ok(slot)),
                Err(e) => Ok(Err(e)),
            }
        })
    }
}

/// A failed page walk as the policy sees it.
fn walk_error(e: &WalkFault) -> HostError {
    match e {
        WalkFault::OutsideRam { .. } => HostError::OutOfRange,
        _ => HostError::NotMapped,
    }
}

/// The imports as they act on the VM; [`host::Host`] runs them through
/// the tape (`tape.rs`) when recording or replaying.
impl Ctx {
    fn live_vcpu_id(&mut self) -> wasmtime::Result<u32> {
        Ok(self.inst.vcpu_index)
    }

    fn live_vcpu_count(&mut self) -> wasmtime::Result<u32> {
        Ok(self.inst.vcpu_count)
    }

    fn live_get_reg(&mut self, r: Reg) -> wasmtime::Result<u64> {
        match self.vcpu.get_reg(convert::reg(r)) {
            Some(Ok(value)) => Ok(value),
            Some(Err(fault)) => {
                let error = wasmtime::Error::msg(fault.to_string());
                self.fault = Some(fault);
                Err(error)
            }
            None => Err(wasmtime::Error::msg("get-reg called outside an exit")),
        }
    }

    fn live_read_phys(&mut self, gpa: u64, len: u32) -> HostResult<Vec<u8>> {
        let len = len as usize;
        if len > MAX_TRANSFER {
            return Ok(Err(HostError::TooLarge));
        }
        if len == 0 {
            return Ok(Ok(Vec::new()));
        }
        if !self.inst.memory.check_range(GuestAddress(gpa), len) {
            return Ok(Err(HostError::OutOfRange));
        }
        let mut buf = vec![0; len];
        Ok(
            match self.inst.memory.read_slice(&mut buf, GuestAddress(gpa)) {
                Ok(()) => Ok(buf),
                Err(_) => Err(HostError::OutOfRange),
            },
        )
    }

    fn live_write_phys(&mut self, gpa: u64, data: Vec<u8>) -> HostResult<()> {
        if !self.inst.grants.write_memory {
            return Ok(Err(HostError::NotGranted));
        }
        if data.len() > MAX_TRANSFER {
            return Ok(Err(HostError::TooLarge));
        }
        if data.is_empty() {
            return Ok(Ok(()));
        }
        if !self.inst.memory.check_range(GuestAddress(gpa), data.len()) {
            return Ok(Err(HostError::OutOfRange));
        }
        Ok(self
            .inst
            .memory
            .write_slice(&data, GuestAddress(gpa))
            .map_err(|_| HostError::OutOfRange))
    }

    fn live_translate(&mut self, gva: u64) -> HostResult<u64> {
        let paging = self.paging("translate")?;
        Ok(translate(&self.inst.memory, &paging, gva)
            .map(|t| t.gpa)
            .map_err(|e| walk_error(&e)))
    }

    fn live_read_virt(&mut self, gva: u64, len: u32) -> HostResult<Vec<u8>> {
        let len = len as usize;
        if len > MAX_TRANSFER {
            return Ok(Err(HostError::TooLarge));
        }
        let chunks = match self.virt_chunks("read-virt", gva, len)? {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let mut out = vec![0u8; len];
        let mut at = 0;
        for (gpa, n) in chunks {
            if self
                .inst
                .memory
                .read_slice(&mut out[at..at + n], GuestAddress(gpa))
                .is_err()
            {
                return Ok(Err(HostError::OutOfRange));
            }
            at += n;
        }
        Ok(Ok(out))
    }

    fn live_write_virt(&mut self, gva: u64, data: Vec<u8>) -> HostResult<()> {
        if !self.inst.grants.write_memory {
            return Ok(Err(HostError::NotGranted));
        }
        if data.len() > MAX_TRANSFER {
            return Ok(Err(HostError::TooLarge));
        }
        // Every page is translated before anything is written.
        let chunks = match self.virt_chunks("write-virt", gva, data.len())? {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let mut at = 0;
        for (gpa, n) in chunks {
            if self
                .inst
                .memory
                .write_slice(&data[at..at + n], GuestAddress(gpa))
                .is_err()
            {
                return Ok(Err(HostError::OutOfRange));
            }
            at += n;
        }
        Ok(Ok(()))
    }

    fn live_get_segment(&mut self, s: types::SegmentReg) -> wasmtime::Result<types::Segment> {
        let s = convert::segment_reg(s);
        self.with_vcpu("get-segment", |v| v.get_segment(s))
            .map(convert::segment_to_wit)
    }

    fn live_set_segment(&mut self, s: types::SegmentReg, value: types::Segment) -> HostResult<()> {
        if !self.inst.grants.set_registers {
            return Ok(Err(HostError::NotGranted));
        }
        let s = convert::segment_reg(s);
        let value = convert::segment_from_wit(value);
        self.with_vcpu("set-segment", |v| v.set_segment(s, value))
            .map(Ok)
    }

    fn live_set_breakpoint(&mut self, bp: types::Breakpoint) -> HostResult<u8> {
        let kind = match bp.kind {
            types::BreakpointKind::Execute => HwBreakpointKind::Execute,
            types::BreakpointKind::Write => HwBreakpointKind::Write,
            types::BreakpointKind::ReadWrite => HwBreakpointKind::ReadWrite,
            // This machine's software KVM backend does not trap #BP; an
            // int3 would be delivered to the guest instead.
            types::BreakpointKind::Software => return Ok(Err(HostError::Unsupported)),
        };
        let len = if kind == HwBreakpointKind::Execute {
            1
        } else {
            bp.len
        };
        if !matches!(len, 1 | 2 | 4 | 8) || !bp.gva.is_multiple_of(u64::from(len)) {
            return Ok(Err(HostError::OutOfRange));
        }
        let hw = HwBreakpoint {
            kind,
            gva: bp.gva,
            len,
        };
        // No slot left: `unsupported` when an attached debugger holds
        // some of them (docs/gdb.md), `too-large` otherwise.
        self.update_debug("set-breakpoint", |d| {
            d.add(hw).ok_or(if d.debugger_slots != 0 {
                HostError::Unsupported
            } else {
                HostError::TooLarge
            })
        })
    }

    fn live_clear_breakpoint(&mut self, slot: u8) -> HostResult<()> {
        if slot > 3 {
            return Ok(Err(HostError::OutOfRange));
        }
        self.update_debug("clear-breakpoint", |d| {
            if d.debugger_holds(slot) {
                return Err(HostError::Unsupported);
            }
            d.hw[usize::from(slot)] = None;
            Ok(slot)
        })
        .map(|r| r.map(|_| ()))
    }

    fn live_single_step(&mut self, on: bool) -> HostResult<()> {
        self.update_debug("single-step", |d| {
            d.step_always = on;
            Ok(0)
        })
        .map(|r| r.map(|_| ()))
    }

    fn live_protect(&mut self, req: ProtectRequest) -> HostResult<()> {
        if !self.inst.grants.protect_memory {
            return Ok(Err(HostError::NotGranted));
        }
        let Some(protector) = self.inst.protector.as_ref() else {
            return Ok(Err(HostError::Unsupported));
        };
        let req = crate::convert::protect_request(req);
        protection_result(protector.protect(req.range, req.mode))
    }

    fn live_unprotect(&mut self, range: GpaRange) -> HostResult<()> {
        if !self.inst.grants.protect_memory {
            return Ok(Err(HostError::NotGranted));
        }
        let Some(protector) = self.inst.protector.as_ref() else {
            return Ok(Err(HostError::Unsupported));
        };
        protection_result(protector.unprotect(crate::convert::gpa_range(range)))
    }

    fn live_console_write(&mut self, bytes: Vec<u8>) -> wasmtime::Result<()> {
        self.inst.shared.console_write(&bytes);
        Ok(())
    }

    fn live_log(&mut self, level: LogLevel, msg: String) -> wasmtime::Result<()> {
        let line = log_line(&self.inst.policy_name, self.inst.vcpu_index, level, &msg);
        self.inst.shared.log_line(&line);
        Ok(())
    }

    fn live_emit(&mut self, kind: String, json: String) -> wasmtime::Result<()> {
        check_len("emit kind", kind.len(), MAX_KEY_BYTES)?;
        check_len("emit payload", json.len(), MAX_EVENT_BYTES)?;
        let inst = &self.inst;
        inst.shared.emit(
            inst.policy_index,
            &inst.policy_name,
            inst.vcpu_index,
            &kind,
            &json,
        );
        Ok(())
    }

    fn live_counter_add(&mut self, key: String, delta: i64) -> wasmtime::Result<i64> {
        check_len("counter key", key.len(), MAX_KEY_BYTES)?;
        self.inst
            .shared
            .counter_add(self.inst.policy_index, key, delta)
            .ok_or_else(|| wasmtime::Error::msg("counter-add would create too many counters"))
    }

    fn live_counter_handle(&mut self, key: String) -> wasmtime::Result<u32> {
        check_len("counter key", key.len(), MAX_KEY_BYTES)?;
        if self.counter_handles.len() >= crate::sinks::MAX_COUNTERS {
            return Err(wasmtime::Error::msg(
                "counter-handle asked for too many handles",
            ));
        }
        let counter = self
            .inst
            .shared
            .counter_handle(self.inst.policy_index, key)
            .ok_or_else(|| wasmtime::Error::msg("counter-handle would create too many counters"))?;
        self.counter_handles.push(counter);
        Ok(self.counter_handles.len() as u32 - 1)
    }

    fn live_counter_add_handle(&mut self, handle: u32, delta: i64) -> wasmtime::Result<i64> {
        match self.counter_handles.get(handle as usize) {
            Some(counter) => Ok(counter.add(delta)),
            None => Err(wasmtime::Error::msg(format!(
                "counter-add-handle: this instance was given no handle {handle}"
            ))),
        }
    }

    fn live_events_enabled(&mut self) -> wasmtime::Result<bool> {
        Ok(self.inst.shared.events_enabled())
    }

    fn live_constant_ports(&mut self, ports: types::PortRange, value: u64) -> HostResult<()> {
        Ok(self.declare_constant(ConstantTarget::Ports(ports.first..=ports.last), value))
    }

    fn live_constant_msrs(&mut self, msrs: types::MsrRange, value: u64) -> HostResult<()> {
        Ok(self.declare_constant(ConstantTarget::Msrs(msrs.first..=msrs.last), value))
    }

    fn live_constant_mmio(&mut self, range: GpaRange, value: u64) -> HostResult<()> {
        Ok(self.declare_constant(ConstantTarget::Mmio(convert::gpa_range(range)), value))
    }

    fn live_set_irq_line(&mut self, line: u32, level: bool) -> HostResult<()> {
        let irq = &self.inst.irq;
        if !irq.granted.contains(line) {
            return Ok(Err(HostError::NotGranted));
        }
        let Some(lines) = irq.lines.as_ref() else {
            return Ok(Err(HostError::Unsupported));
        };
        // A failed KVM_IRQ_LINE is the host's fault, not the policy's.
        lines.set_level(line, level).map_err(wasmtime::Error::msg)?;
        Ok(Ok(()))
    }

    /// Queues a baseline or reset for the end of this exit (`snapshot-*`).
    fn live_snapshot(&mut self, op: crate::SnapshotOp) -> HostResult<()> {
        let access = &self.inst.snapshots;
        if !access.granted {
            return Ok(Err(HostError::NotGranted));
        }
        let Some(vm) = access.vm.as_ref() else {
            return Ok(Err(HostError::Unsupported));
        };
        Ok(vm
            .request(self.inst.vcpu_index, op)
            .map_err(|_| HostError::Unsupported))
    }

    fn live_snapshot_baseline(&mut self) -> HostResult<()> {
        self.live_snapshot(crate::SnapshotOp::Baseline)
    }

    fn live_snapshot_reset(&mut self) -> HostResult<()> {
        self.live_snapshot(crate::SnapshotOp::Reset)
    }

    /// Runs `f` on the VM's kernel profile and the kernel's relocation;
    /// `unsupported` without a profile (or one that cannot be read).
    fn with_kernel<T>(
        &mut self,
        f: impl FnOnce(&wasmvisor_profile::Profile, u64) -> T,
    ) -> HostResult<T> {
        let Some(kernel) = self.inst.shared.kernel().cloned() else {
            return Ok(Err(HostError::Unsupported));
        };
        let Ok(profile) = kernel.load() else {
            return Ok(Err(HostError::Unsupported));
        };
        // LSTAR is read through the vCPU only until the slide is known;
        // outside an exit (init) the slide reads as what is known so far.
        let slide = kernel.slide(|| {
            self.vcpu
                .access()
                .and_then(|v| v.host_rdmsr(crate::kernel::MSR_LSTAR).ok().flatten())
        });
        Ok(Ok(f(profile, slide)))
    }

    fn live_kernel_symbol(&mut self, name: String) -> HostResult<Option<u64>> {
        self.with_kernel(|p, slide| crate::kernel::KernelProfile::symbol(p, slide, &name))
    }

    fn live_kernel_symbolize(&mut self, addr: u64) -> HostResult<Option<(String, u64)>> {
        self.with_kernel(|p, slide| crate::kernel::KernelProfile::symbolize(p, slide, addr))
    }

    fn live_kernel_type_size(&mut self, name: String) -> HostResult<Option<u64>> {
        self.with_kernel(|p, _| p.types.size_of(&name))
    }

    fn live_kernel_member_offset(&mut self, path: String) -> HostResult<Option<u64>> {
        self.with_kernel(|p, _| p.types.offset_of(&path))
    }

    fn live_dma_mappings(&mut self) -> wasmtime::Result<Vec<GpaRange>> {
        Ok(self
            .inst
            .shared
            .dma_mappings()
            .into_iter()
            .map(|r| GpaRange {
                base: r.base,
                len: r.len,
            })
            .collect())
    }
}

/// Runs one import through the tape when one is running, else straight
/// to its `live_` implementation (no serialisation cost).
macro_rules! taped {
    ($ctx:ident, $wit:literal, $live:ident($($arg:ident),*)) => {{
        if !$ctx.taping() {
            return $ctx.$live($($arg),*);
        }
        let args = tape::args(&($(&$arg,)*));
        $ctx.taped($wit, args, move |c| c.$live($($arg),*))
    }};
}

impl host::Host for Ctx {
    fn vcpu_id(&mut self) -> wasmtime::Result<u32> {
        taped!(self, "vcpu-id", live_vcpu_id())
    }

    fn vcpu_count(&mut self) -> wasmtime::Result<u32> {
        taped!(self, "vcpu-count", live_vcpu_count())
    }

    fn get_reg(&mut self, r: Reg) -> wasmtime::Result<u64> {
        taped!(self, "get-reg", live_get_reg(r))
    }

    fn read_phys(&mut self, gpa: u64, len: u32) -> HostResult<Vec<u8>> {
        taped!(self, "read-phys", live_read_phys(gpa, len))
    }

    fn write_phys(&mut self, gpa: u64, data: Vec<u8>) -> HostResult<()> {
        taped!(self, "write-phys", live_write_phys(gpa, data))
    }

    fn translate(&mut self, gva: u64) -> HostResult<u64> {
        taped!(self, "translate", live_translate(gva))
    }

    fn read_virt(&mut self, gva: u64, len: u32) -> HostResult<Vec<u8>> {
        taped!(self, "read-virt", live_read_virt(gva, len))
    }

    fn write_virt(&mut self, gva: u64, data: Vec<u8>) -> HostResult<()> {
        taped!(self, "write-virt", live_write_virt(gva, data))
    }

    fn get_segment(&mut self, s: types::SegmentReg) -> wasmtime::Result<types::Segment> {
        taped!(self, "get-segment", live_get_segment(s))
    }

    fn set_segment(&mut self, s: types::SegmentReg, value: types::Segment) -> HostResult<()> {
        taped!(self, "set-segment", live_set_segment(s, value))
    }

    fn set_breakpoint(&mut self, bp: types::Breakpoint) -> HostResult<u8> {
        taped!(self, "set-breakpoint", live_set_breakpoint(bp))
    }

    fn clear_breakpoint(&mut self, slot: u8) -> HostResult<()> {
        taped!(self, "clear-breakpoint", live_clear_breakpoint(slot))
    }

    fn single_step(&mut self, on: bool) -> HostResult<()> {
        taped!(self, "single-step", live_single_step(on))
    }

    fn protect(&mut self, req: ProtectRequest) -> HostResult<()> {
        taped!(self, "protect", live_protect(req))
    }

    fn unprotect(&mut self, range: GpaRange) -> HostResult<()> {
        taped!(self, "unprotect", live_unprotect(range))
    }

    fn console_write(&mut self, bytes: Vec<u8>) -> wasmtime::Result<()> {
        taped!(self, "console-write", live_console_write(bytes))
    }

    fn log(&mut self, level: LogLevel, msg: String) -> wasmtime::Result<()> {
        taped!(self, "log", live_log(level, msg))
    }

    fn emit(&mut self, kind: String, json: String) -> wasmtime::Result<()> {
        taped!(self, "emit", live_emit(kind, json))
    }

    fn counter_add(&mut self, key: String, delta: i64) -> wasmtime::Result<i64> {
        taped!(self, "counter-add", live_counter_add(key, delta))
    }

    fn constant_ports(&mut self, ports: types::PortRange, value: u64) -> HostResult<()> {
        taped!(self, "constant-ports", live_constant_ports(ports, value))
    }

    fn constant_msrs(&mut self, msrs: types::MsrRange, value: u64) -> HostResult<()> {
        taped!(self, "constant-msrs", live_constant_msrs(msrs, value))
    }

    fn constant_mmio(&mut self, range: GpaRange, value: u64) -> HostResult<()> {
        taped!(self, "constant-mmio", live_constant_mmio(range, value))
    }

    fn set_irq_line(&mut self, line: u32, level: bool) -> HostResult<()> {
        taped!(self, "set-irq-line", live_set_irq_line(line, level))
    }

    fn counter_handle(&mut self, key: String) -> wasmtime::Result<u32> {
        taped!(self, "counter-handle", live_counter_handle(key))
    }

    fn counter_add_handle(&mut self, handle: u32, delta: i64) -> wasmtime::Result<i64> {
        taped!(
            self,
            "counter-add-handle",
            live_counter_add_handle(handle, delta)
        )
    }

    fn events_enabled(&mut self) -> wasmtime::Result<bool> {
        taped!(self, "events-enabled", live_events_enabled())
    }

    fn snapshot_baseline(&mut self) -> HostResult<()> {
        taped!(self, "snapshot-baseline", live_snapshot_baseline())
    }

    fn snapshot_reset(&mut self) -> HostResult<()> {
        taped!(self, "snapshot-reset", live_snapshot_reset())
    }

    fn dma_mappings(&mut self) -> wasmtime::Result<Vec<GpaRange>> {
        taped!(self, "dma-mappings", live_dma_mappings())
    }

    fn kernel_symbol(&mut self, name: String) -> HostResult<Option<u64>> {
        taped!(self, "kernel-symbol", live_kernel_symbol(name))
    }

    fn kernel_symbolize(&mut self, addr: u64) -> HostResult<Option<(String, u64)>> {
        taped!(self, "kernel-symbolize", live_kernel_symbolize(addr))
    }

    fn kernel_type_size(&mut self, name: String) -> HostResult<Option<u64>> {
        taped!(self, "kernel-type-size", live_kernel_type_size(name))
    }

    fn kernel_member_offset(&mut self, path: String) -> HostResult<Option<u64>> {
        taped!(
            self,
            "kernel-member-offset",
            live_kernel_member_offset(path)
        )
    }
}

/// Traps if a string argument is longer than the host accepts.
fn check_len(what: &str, len: usize, max: usize) -> wasmtime::Result<()> {
    if len > max {
        return Err(wasmtime::Error::msg(format!(
            "{what} of {len} bytes exceeds the {max}-byte limit"
        )));
    }
    Ok(())
}

/// `[policy NAME vcpu N] LEVEL: msg` and a newline, with `msg` cut to
/// [`MAX_LOG_BYTES`] and control characters escaped so the line stays one
/// line.
fn log_line(policy: &str, vcpu: u32, level: LogLevel, msg: &str) -> String {
    let level = match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    let mut cut = msg.len().min(MAX_LOG_BYTES);
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut line = String::with_capacity(cut + policy.len() + 32);
    let _ = write!(line, "[policy {policy} vcpu {vcpu}] {level}: ");
    for c in msg[..cut].chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    if cut < msg.len() {
        line.push_str(" [cut]");
    }
    line.push('\n');
    line
}

/// Maps a protection change's outcome to what the policy sees: its own
/// mistakes are errors it can handle, a failing memslot update is a host
/// fault (a trap).
fn protection_result(r: Result<(), wasmvisor_exit::ProtectError>) -> HostResult<()> {
    use wasmvisor_exit::ProtectError;
    match r {
        Ok(()) => Ok(Ok(())),
        Err(ProtectError::NoExecute) => Ok(Err(HostError::Unsupported)),
        Err(ProtectError::Unaligned { .. } | ProtectError::OutsideRam { .. }) => {
            Ok(Err(HostError::OutOfRange))
        }
        Err(e @ ProtectError::Backend(_)) => Err(wasmtime::Error::msg(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_prefixed_escaped_and_cut() {
        assert_eq!(
            log_line("serial", 2, LogLevel::Warn, "a\nb\tc"),
            "[policy serial vcpu 2] warn: a\\nb\\tc\n"
        );
        let long = "é".repeat(3000);
        let line = log_line("p", 0, LogLevel::Info, &long);
        assert!(line.ends_with(" [cut]\n"));
        assert!(line.len() < MAX_LOG_BYTES + 64);
    }

    #[test]
    fn oversize_strings_trap() {
        assert!(check_len("counter key", 256, MAX_KEY_BYTES).is_ok());
        let err = check_len("counter key", 257, MAX_KEY_BYTES).unwrap_err();
        assert_eq!(
            err.to_string(),
            "counter key of 257 bytes exceeds the 256-byte limit"
        );
    }
}
