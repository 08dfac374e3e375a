//! The `host` imports off the host: each acts on the installed
//! [`FakeHost`](super::FakeHost) with the host's rules
//! (`host/policy/src/imports.rs`): the same grants, limits and errors, and
//! a panic where the host would trap. [`crate::host`] re-exports these on
//! every target but `wasm32`, with the same names and signatures as the
//! generated imports.

use super::fake::NULL_SEGMENT;
use super::installed::with;
use super::recording::{Constant, Event, LogLine, SnapshotCall};
use crate::Capabilities;

pub use crate::bindings::wasmvisor::policy::host::{
    Breakpoint, GpaRange, HostError, LogLevel, MsrRange, PortRange, ProtectRequest, Reg, Segment,
    SegmentReg,
};
use crate::{BreakpointKind, Protection};

/// Largest guest-memory transfer one call may make.
const MAX_TRANSFER: usize = 64 * 1024;
/// Longest event payload `emit` accepts.
const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Longest event kind or counter key.
const MAX_KEY_BYTES: usize = 256;
/// Most counters a policy may create.
const MAX_COUNTERS: usize = 65_536;
/// Most constant answers one instance may declare.
const MAX_CONSTANTS: usize = 64;
/// Protection works on whole pages.
const PAGE: u64 = 4096;

/// Fails like the host, which traps (ending the instance) on a string
/// longer than it accepts.
fn check_len(import: &str, what: &str, len: usize, max: usize) {
    assert!(
        len <= max,
        "host::{import}: {what} of {len} bytes exceeds the {max}-byte limit (the host traps)"
    );
}

/// `too-large` past what the host moves in one call.
fn within_transfer(len: usize) -> Result<(), HostError> {
    if len > MAX_TRANSFER {
        Err(HostError::TooLarge)
    } else {
        Ok(())
    }
}

/// A guest-memory write of `len` bytes: it needs the write-memory grant,
/// checked first as the host does, and fits in one transfer.
fn writable(host: &super::FakeHost, len: usize) -> Result<(), HostError> {
    granted(host, Capabilities::WRITE_MEMORY)?;
    within_transfer(len)
}

/// `Err(not-granted)` unless `capability` was granted.
fn granted(host: &super::FakeHost, capability: Capabilities) -> Result<(), HostError> {
    if host.vm().grants.contains(capability) {
        Ok(())
    } else {
        Err(HostError::NotGranted)
    }
}

/// Index of the vCPU this instance serves.
pub fn vcpu_id() -> u32 {
    with("vcpu_id", |h| h.cpu().id)
}

/// Number of vCPUs in the VM.
pub fn vcpu_count() -> u32 {
    with("vcpu_count", |h| h.vm().vcpu_count)
}

/// Read a register of this vCPU. Off the host: 0 unless the test set it.
pub fn get_reg(r: Reg) -> u64 {
    with("get_reg", |h| h.cpu().regs.get(&r).copied().unwrap_or(0))
}

/// Read guest-physical memory (at most 64 KiB per call). Off the host:
/// `out-of-range` unless the whole range is mapped RAM.
pub fn read_phys(gpa: u64, len: u32) -> Result<Vec<u8>, HostError> {
    with("read_phys", |h| {
        let len = len as usize;
        within_transfer(len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        h.vm().memory.read(gpa, len)
    })
}

/// Write guest-physical memory (grant: write-memory).
pub fn write_phys(gpa: u64, data: &[u8]) -> Result<(), HostError> {
    with("write_phys", |h| {
        writable(h, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        h.vm().memory.write(gpa, data)
    })
}

/// Translate a guest-virtual address through the guest's page tables.
/// Off the host: through the fake's mappings, `not-mapped` outside them.
pub fn translate(gva: u64) -> Result<u64, HostError> {
    with("translate", |h| h.vm().memory.translate(gva))
}

/// Read guest-virtual memory through the guest's page tables.
pub fn read_virt(gva: u64, len: u32) -> Result<Vec<u8>, HostError> {
    with("read_virt", |h| {
        let len = len as usize;
        within_transfer(len)?;
        h.vm().memory.read_virt(gva, len)
    })
}

/// Write guest-virtual memory through the guest's page tables
/// (grant: write-memory).
pub fn write_virt(gva: u64, data: &[u8]) -> Result<(), HostError> {
    with("write_virt", |h| {
        writable(h, data.len())?;
        h.vm().memory.write_virt(gva, data)
    })
}

/// A page-aligned, non-empty range inside RAM, as the host's protection
/// map requires; `out-of-range` otherwise.
fn protectable(host: &super::FakeHost, range: GpaRange) -> Result<(), HostError> {
    let GpaRange { base, len } = range;
    let aligned = base.is_multiple_of(PAGE) && len.is_multiple_of(PAGE) && len > 0;
    let in_ram = usize::try_from(len).is_ok_and(|n| host.vm().memory.contains(base, n));
    if aligned && in_ram {
        Ok(())
    } else {
        Err(HostError::OutOfRange)
    }
}

/// Protect or unprotect guest-physical pages (grant: protect-memory).
/// Off the host: an accepted call is recorded
/// ([`FakeHost::protect_calls`](super::FakeHost::protect_calls)).
pub fn protect(req: ProtectRequest) -> Result<(), HostError> {
    with("protect", |h| {
        granted(h, Capabilities::PROTECT_MEMORY)?;
        if req.mode == Protection::NoExecute {
            return Err(HostError::Unsupported);
        }
        protectable(h, req.range)?;
        h.vm().protects.push(req);
        Ok(())
    })
}

/// Remove protection from guest-physical pages (grant: protect-memory).
/// Off the host: an accepted call is recorded
/// ([`FakeHost::unprotect_calls`](super::FakeHost::unprotect_calls)).
pub fn unprotect(range: GpaRange) -> Result<(), HostError> {
    with("unprotect", |h| {
        granted(h, Capabilities::PROTECT_MEMORY)?;
        protectable(h, range)?;
        h.vm().unprotects.push(range);
        Ok(())
    })
}

/// Read a segment register of this vCPU. Off the host: all zeros unless
/// set.
pub fn get_segment(s: SegmentReg) -> Segment {
    with("get_segment", |h| {
        h.cpu().segments.get(&s).copied().unwrap_or(NULL_SEGMENT)
    })
}

/// Write a segment register (grant: set-registers).
pub fn set_segment(s: SegmentReg, value: Segment) -> Result<(), HostError> {
    with("set_segment", |h| {
        granted(h, Capabilities::SET_REGISTERS)?;
        h.cpu().segments.insert(s, value);
        Ok(())
    })
}

/// Set a breakpoint on this vCPU; returns its slot (DR0-3) (grant: debug).
/// As on the host: a software breakpoint is `unsupported`; a length other
/// than 1, 2, 4 or 8, or an address not aligned to it, is `out-of-range`
/// (an execute breakpoint always has length 1); setting one already set
/// returns its slot; `too-large` when all four slots are taken.
pub fn set_breakpoint(bp: Breakpoint) -> Result<u8, HostError> {
    with("set_breakpoint", |h| {
        let len = match bp.kind {
            BreakpointKind::Software => return Err(HostError::Unsupported),
            BreakpointKind::Execute => 1,
            BreakpointKind::Write | BreakpointKind::ReadWrite => bp.len,
        };
        if !matches!(len, 1 | 2 | 4 | 8) || !bp.gva.is_multiple_of(u64::from(len)) {
            return Err(HostError::OutOfRange);
        }
        granted(h, Capabilities::DEBUG)?;
        let bp = Breakpoint { len, ..bp };
        let mut cpu = h.cpu();
        let slots = &mut cpu.breakpoints;
        let slot = match slots.iter().position(|s| *s == Some(bp)) {
            Some(same) => same,
            None => slots
                .iter()
                .position(Option::is_none)
                .ok_or(HostError::TooLarge)?,
        };
        slots[slot] = Some(bp);
        Ok(slot as u8)
    })
}

/// Clear the breakpoint in a slot (grant: debug).
pub fn clear_breakpoint(slot: u8) -> Result<(), HostError> {
    with("clear_breakpoint", |h| {
        if slot > 3 {
            return Err(HostError::OutOfRange);
        }
        granted(h, Capabilities::DEBUG)?;
        h.cpu().breakpoints[usize::from(slot)] = None;
        Ok(())
    })
}

/// Turn single-stepping of this vCPU on or off (grant: debug).
pub fn single_step(on: bool) -> Result<(), HostError> {
    with("single_step", |h| {
        granted(h, Capabilities::DEBUG)?;
        h.cpu().single_step = on;
        Ok(())
    })
}

/// Write bytes to the VM console. Off the host: recorded
/// ([`FakeHost::console`](super::FakeHost::console)).
pub fn console_write(bytes: &[u8]) {
    with("console_write", |h| h.vm().console.extend_from_slice(bytes));
}

/// Log a line on the host's standard error. Off the host: recorded
/// ([`FakeHost::logs`](super::FakeHost::logs)).
pub fn log(level: LogLevel, msg: &str) {
    with("log", |h| {
        let vcpu = h.cpu().id;
        h.vm().logs.push(LogLine {
            vcpu,
            level,
            msg: msg.into(),
        });
    });
}

/// Append a structured record to the event stream. Off the host: recorded
/// ([`FakeHost::events`](super::FakeHost::events)); a kind over 256 bytes
/// or a payload over 64 KiB panics, where the host traps.
pub fn emit(kind: &str, json: &str) {
    with("emit", |h| {
        check_len("emit", "kind", kind.len(), MAX_KEY_BYTES);
        check_len("emit", "payload", json.len(), MAX_EVENT_BYTES);
        let vcpu = h.cpu().id;
        h.vm().events.push(Event {
            vcpu,
            kind: kind.into(),
            json: json.into(),
        });
    });
}

/// Add `delta` (saturating) to a counter shared by every vCPU's instance
/// of this policy and return the new value. Off the host: shared by the
/// fakes of one VM ([`FakeHost::for_vcpu`](super::FakeHost::for_vcpu)).
pub fn counter_add(key: &str, delta: i64) -> i64 {
    with("counter_add", |h| {
        check_len("counter_add", "key", key.len(), MAX_KEY_BYTES);
        let mut vm = h.vm();
        assert!(
            vm.counters.contains_key(key) || vm.counters.len() < MAX_COUNTERS,
            "host::counter_add: more than {MAX_COUNTERS} counters (the host traps)"
        );
        let value = vm.counters.entry(key.into()).or_insert(0);
        *value = value.saturating_add(delta);
        *value
    })
}

/// A handle on counter `key`: here, the key's index in this fake's
/// handle table.
pub fn counter_handle(key: &str) -> u32 {
    with("counter_handle", |h| {
        check_len("counter_handle", "key", key.len(), MAX_KEY_BYTES);
        let mut vm = h.vm();
        vm.counters.entry(key.into()).or_insert(0);
        let at = match vm.counter_handles.iter().position(|k| k == key) {
            Some(at) => at,
            None => {
                vm.counter_handles.push(key.into());
                vm.counter_handles.len() - 1
            }
        };
        at as u32
    })
}

/// `counter_add` through a handle; an unknown handle panics (the host
/// traps).
pub fn counter_add_handle(handle: u32, delta: i64) -> i64 {
    let key = with("counter_add_handle", |h| {
        h.vm().counter_handles.get(handle as usize).cloned()
    })
    .unwrap_or_else(|| {
        panic!("host::counter_add_handle: unknown handle {handle} (the host traps)")
    });
    counter_add(&key, delta)
}

/// Whether events are written: the fake keeps them unless a test turned
/// them off (`FakeHost::disable_events`).
pub fn events_enabled() -> bool {
    with("events_enabled", |h| !h.vm().events_off)
}

/// Records a constant answer: only during `init`, at most 64 of them.
fn declare(import: &str, constant: Constant) -> Result<(), HostError> {
    with(import, |h| {
        let mut cpu = h.cpu();
        if !cpu.in_init {
            return Err(HostError::Unsupported);
        }
        if cpu.constants.len() >= MAX_CONSTANTS {
            return Err(HostError::TooLarge);
        }
        cpu.constants.push(constant);
        Ok(())
    })
}

/// Constant answers for ports, declared during `init` only (`unsupported`
/// otherwise). Off the host: recorded
/// ([`FakeHost::constants`](super::FakeHost::constants)) while
/// [`Harness`](super::Harness) runs `init`.
pub fn constant_ports(ports: PortRange, value: u64) -> Result<(), HostError> {
    declare("constant_ports", Constant::Ports(ports, value))
}

/// Constant answers for MSRs, declared during `init` only.
pub fn constant_msrs(msrs: MsrRange, value: u64) -> Result<(), HostError> {
    declare("constant_msrs", Constant::Msrs(msrs, value))
}

/// Constant answers for MMIO bytes, declared during `init` only.
pub fn constant_mmio(range: GpaRange, value: u64) -> Result<(), HostError> {
    declare("constant_mmio", Constant::Mmio(range, value))
}

/// Drive interrupt line `line`: `not-granted` for a line the operator did
/// not grant ([`FakeHost::grant_irq`](super::FakeHost::grant_irq)),
/// `unsupported` without an interrupt controller. Off the host: an
/// accepted call is recorded ([`FakeHost::irq_calls`](super::FakeHost::irq_calls)).
pub fn set_irq_line(line: u32, level: bool) -> Result<(), HostError> {
    with("set_irq_line", |h| {
        let mut vm = h.vm();
        if !vm.irq_granted.contains(&line) {
            return Err(HostError::NotGranted);
        }
        if !vm.irqchip {
            return Err(HostError::Unsupported);
        }
        vm.irq_calls.push((line, level));
        Ok(())
    })
}

/// `dma-mappings`: the ranges set with
/// [`FakeHost::set_dma_mappings`](super::FakeHost::set_dma_mappings)
/// (none by default, as on a VM without passthrough devices).
pub fn dma_mappings() -> Vec<GpaRange> {
    with("dma_mappings", |h| h.vm().dma_mappings.clone())
}

/// Runs `f` on the fake's kernel profile: `unsupported` without one, as
/// the host answers for a VM with no profile.
fn with_kernel<T>(
    import: &str,
    f: impl FnOnce(&super::KernelProfile) -> T,
) -> Result<T, HostError> {
    with(import, |h| match &h.vm().kernel {
        Some(profile) => Ok(f(profile)),
        None => Err(HostError::Unsupported),
    })
}

/// `kernel-symbol`: the address of kernel symbol `name`, from the profile
/// set with [`FakeHost::set_kernel_profile`](super::FakeHost::set_kernel_profile);
/// `none` for a symbol it lacks, `unsupported` without a profile.
pub fn kernel_symbol(name: &str) -> Result<Option<u64>, HostError> {
    with_kernel("kernel_symbol", |k| k.lookup(name))
}

/// `kernel-symbolize`: the profile's symbol at or below `addr` and how
/// far `addr` lies past it; `none` below the first symbol,
/// `unsupported` without a profile.
pub fn kernel_symbolize(addr: u64) -> Result<Option<(String, u64)>, HostError> {
    with_kernel("kernel_symbolize", |k| k.symbolize(addr))
}

/// `kernel-type-size`: the size of type `name` in the profile; `none`
/// for a type it lacks, `unsupported` without a profile.
pub fn kernel_type_size(name: &str) -> Result<Option<u64>, HostError> {
    with_kernel("kernel_type_size", |k| k.type_size_of(name))
}

/// `kernel-member-offset`: the offset of member `path` in the profile;
/// `none` for a member it lacks, `unsupported` without a profile.
pub fn kernel_member_offset(path: &str) -> Result<Option<u64>, HostError> {
    with_kernel("kernel_member_offset", |k| k.member_offset(path))
}

/// A snapshot call as the host checks it: `not-granted` without the
/// operator's `@grant=snapshot`
/// ([`FakeHost::grant_snapshot`](super::FakeHost::grant_snapshot)), then
/// `unsupported` on a VM that cannot snapshot
/// ([`FakeHost::set_snapshot_supported`](super::FakeHost::set_snapshot_supported)).
fn snapshot(import: &str, call: SnapshotCall) -> Result<(), HostError> {
    with(import, |h| {
        let mut vm = h.vm();
        if !vm.snapshot_granted {
            return Err(HostError::NotGranted);
        }
        if !vm.snapshot_supported {
            return Err(HostError::Unsupported);
        }
        match call {
            SnapshotCall::Baseline => vm.has_baseline = true,
            SnapshotCall::Reset if !vm.has_baseline => return Err(HostError::Unsupported),
            SnapshotCall::Reset => {}
        }
        vm.snapshots.push(call);
        Ok(())
    })
}

/// `snapshot-baseline`: take the baseline once this exit is complete.
/// Off the host: an accepted call is recorded
/// ([`FakeHost::snapshot_calls`](super::FakeHost::snapshot_calls)), and
/// from then on `snapshot-reset` has a baseline; nothing is copied.
pub fn snapshot_baseline() -> Result<(), HostError> {
    snapshot("snapshot_baseline", SnapshotCall::Baseline)
}

/// `snapshot-reset`: put the VM back to the baseline once this exit is
/// complete, dropping the actions that answer it; `unsupported` with no
/// baseline. Off the host: an accepted call is recorded
/// ([`FakeHost::snapshot_calls`](super::FakeHost::snapshot_calls)); no
/// memory, register or policy state changes.
pub fn snapshot_reset() -> Result<(), HostError> {
    snapshot("snapshot_reset", SnapshotCall::Reset)
}

#[cfg(test)]
mod tests {
    use crate::bindings::wasmvisor::policy::host as generated;
    use crate::host;

    /// Fails to compile if a native function's signature drifts from the
    /// generated import it stands in for: policies must compile the same
    /// for both.
    #[test]
    fn signatures_match_the_generated_imports() {
        macro_rules! same {
            ($($f:ident: $t:ty),* $(,)?) => {
                $( let _: [$t; 2] = [host::$f, generated::$f]; )*
            };
        }
        use host::*;
        same!(
            vcpu_id: fn() -> u32,
            vcpu_count: fn() -> u32,
            get_reg: fn(Reg) -> u64,
            read_phys: fn(u64, u32) -> Result<Vec<u8>, HostError>,
            write_phys: fn(u64, &[u8]) -> Result<(), HostError>,
            translate: fn(u64) -> Result<u64, HostError>,
            read_virt: fn(u64, u32) -> Result<Vec<u8>, HostError>,
            write_virt: fn(u64, &[u8]) -> Result<(), HostError>,
            protect: fn(ProtectRequest) -> Result<(), HostError>,
            unprotect: fn(GpaRange) -> Result<(), HostError>,
            get_segment: fn(SegmentReg) -> Segment,
            set_segment: fn(SegmentReg, Segment) -> Result<(), HostError>,
            set_breakpoint: fn(Breakpoint) -> Result<u8, HostError>,
            clear_breakpoint: fn(u8) -> Result<(), HostError>,
            single_step: fn(bool) -> Result<(), HostError>,
            console_write: fn(&[u8]),
            log: fn(LogLevel, &str),
            emit: fn(&str, &str),
            counter_add: fn(&str, i64) -> i64,
            counter_handle: fn(&str) -> u32,
            counter_add_handle: fn(u32, i64) -> i64,
            events_enabled: fn() -> bool,
            constant_ports: fn(PortRange, u64) -> Result<(), HostError>,
            constant_msrs: fn(MsrRange, u64) -> Result<(), HostError>,
            constant_mmio: fn(GpaRange, u64) -> Result<(), HostError>,
            set_irq_line: fn(u32, bool) -> Result<(), HostError>,
            dma_mappings: fn() -> Vec<GpaRange>,
            kernel_symbol: fn(&str) -> Result<Option<u64>, HostError>,
            kernel_symbolize: fn(u64) -> Result<Option<(String, u64)>, HostError>,
            kernel_type_size: fn(&str) -> Result<Option<u64>, HostError>,
            kernel_member_offset: fn(&str) -> Result<Option<u64>, HostError>,
            snapshot_baseline: fn() -> Result<(), HostError>,
            snapshot_reset: fn() -> Result<(), HostError>,
        );
    }
}
