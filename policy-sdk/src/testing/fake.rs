//! [`FakeHost`]: a programmable stand-in for the wasmvisor host.

use core::cell::{RefCell, RefMut};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use super::installed::{self, Installed};
use super::kernel::KernelProfile;
use super::memory::Memory;
use super::recording::{Constant, Event, LogLine, SnapshotCall};
use crate::{Breakpoint, Capabilities, GpaRange, ProtectRequest, Reg, Segment, SegmentReg};

/// What every vCPU of the fake VM shares, as they share it in a real VM:
/// memory, counters, grants, interrupt lines and the output streams.
#[derive(Debug)]
pub(crate) struct Vm {
    pub(crate) memory: Memory,
    pub(crate) vcpu_count: u32,
    pub(crate) grants: Capabilities,
    pub(crate) irq_granted: BTreeSet<u32>,
    pub(crate) irqchip: bool,
    pub(crate) counters: BTreeMap<String, i64>,
    /// Keys by `counter_handle` handle.
    pub(crate) counter_handles: Vec<String>,
    /// `events_enabled` answers false (`FakeHost::disable_events`).
    pub(crate) events_off: bool,
    pub(crate) console: Vec<u8>,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) events: Vec<Event>,
    pub(crate) protects: Vec<ProtectRequest>,
    pub(crate) unprotects: Vec<GpaRange>,
    pub(crate) irq_calls: Vec<(u32, bool)>,
    pub(crate) dma_mappings: Vec<GpaRange>,
    pub(crate) kernel: Option<KernelProfile>,
    /// The operator's `@grant=snapshot`.
    pub(crate) snapshot_granted: bool,
    /// False for a VM that cannot snapshot (passed-through devices).
    pub(crate) snapshot_supported: bool,
    /// A `snapshot-baseline` was accepted: `snapshot-reset` has one.
    pub(crate) has_baseline: bool,
    pub(crate) snapshots: Vec<SnapshotCall>,
}

/// What belongs to one vCPU, and to the policy instance serving it.
#[derive(Debug)]
pub(crate) struct Vcpu {
    pub(crate) id: u32,
    pub(crate) regs: BTreeMap<Reg, u64>,
    pub(crate) segments: BTreeMap<SegmentReg, Segment>,
    pub(crate) breakpoints: [Option<Breakpoint>; 4],
    pub(crate) single_step: bool,
    /// `init` is running: only then may constant answers be declared.
    pub(crate) in_init: bool,
    pub(crate) constants: Vec<Constant>,
}

impl Vcpu {
    fn new(id: u32) -> Vcpu {
        Vcpu {
            id,
            regs: BTreeMap::new(),
            segments: BTreeMap::new(),
            breakpoints: [None; 4],
            single_step: false,
            in_init: false,
            constants: Vec::new(),
        }
    }
}

/// The segment `get-segment` returns for a register the test never set.
pub(crate) const NULL_SEGMENT: Segment = Segment {
    selector: 0,
    base: 0,
    limit: 0,
    attributes: 0,
    unusable: false,
};

/// A fake wasmvisor host for one vCPU, for testing a policy natively.
///
/// While a `FakeHost` is installed on the current thread
/// ([`install`](Self::install), [`run`](Self::run), or a
/// [`Harness`](super::Harness) call), every function of
/// [`host`](crate::host) acts on it with the host's rules: the same
/// grants, limits and errors (`wit/policy.wit`, `docs/introspection.md`).
///
/// A new fake is vCPU 0 of 1, with no RAM, no virtual mappings, every
/// register 0, no capability granted, no interrupt line granted, an
/// interrupt controller, no kernel profile, and snapshots supported but
/// not granted. The test programs it with
/// the `set_*`, `map_*` and `grant*` methods and reads back what the
/// policy did with the others; all take `&self`, so a fake can be changed
/// while installed.
///
/// A clone is another handle on the same fake. [`for_vcpu`](Self::for_vcpu)
/// gives the fake of another vCPU of the same VM, for policies whose
/// instances share counters or memory.
#[derive(Debug, Clone)]
pub struct FakeHost {
    vm: Rc<RefCell<Vm>>,
    cpu: Rc<RefCell<Vcpu>>,
}

impl Default for FakeHost {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHost {
    /// vCPU 0 of a one-vCPU VM with nothing mapped and nothing granted.
    pub fn new() -> FakeHost {
        let vm = Vm {
            memory: Memory::default(),
            vcpu_count: 1,
            grants: Capabilities::empty(),
            irq_granted: BTreeSet::new(),
            irqchip: true,
            counters: BTreeMap::new(),
            counter_handles: Vec::new(),
            events_off: false,
            console: Vec::new(),
            logs: Vec::new(),
            events: Vec::new(),
            protects: Vec::new(),
            unprotects: Vec::new(),
            irq_calls: Vec::new(),
            dma_mappings: Vec::new(),
            kernel: None,
            snapshot_granted: false,
            snapshot_supported: true,
            has_baseline: false,
            snapshots: Vec::new(),
        };
        FakeHost {
            vm: Rc::new(RefCell::new(vm)),
            cpu: Rc::new(RefCell::new(Vcpu::new(0))),
        }
    }

    /// The fake of vCPU `id` of the same VM: it shares memory, mappings,
    /// counters, grants and recordings with this one, and has its own
    /// registers, segments and debug state. The VM grows to `id + 1`
    /// vCPUs if it had fewer.
    pub fn for_vcpu(&self, id: u32) -> FakeHost {
        {
            let mut vm = self.vm();
            vm.vcpu_count = vm.vcpu_count.max(id.saturating_add(1));
        }
        FakeHost {
            vm: Rc::clone(&self.vm),
            cpu: Rc::new(RefCell::new(Vcpu::new(id))),
        }
    }

    /// Makes this fake the one `host` calls reach on this thread until the
    /// guard is dropped; the previously installed one, if any, comes back
    /// then.
    pub fn install(&self) -> Installed {
        installed::install(self.clone())
    }

    /// Runs `f` with this fake installed.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _installed = self.install();
        f()
    }

    /// Runs `f` installed and allowed to declare constant answers, as the
    /// host allows during `init` only.
    pub(crate) fn during_init<R>(&self, f: impl FnOnce() -> R) -> R {
        self.cpu().in_init = true;
        let out = self.run(f);
        self.cpu().in_init = false;
        out
    }

    pub(crate) fn vm(&self) -> RefMut<'_, Vm> {
        self.vm.borrow_mut()
    }

    pub(crate) fn cpu(&self) -> RefMut<'_, Vcpu> {
        self.cpu.borrow_mut()
    }

    // Programming the fake.

    /// Sets the number of vCPUs `vcpu-count` reports.
    pub fn set_vcpu_count(&self, count: u32) -> &Self {
        self.vm().vcpu_count = count;
        self
    }

    /// Sets a register of this vCPU (and the RIP a [`Harness`](super::Harness)
    /// exit reports, for [`Reg::Rip`]).
    pub fn set_reg(&self, reg: Reg, value: u64) -> &Self {
        self.cpu().regs.insert(reg, value);
        self
    }

    /// Sets a segment register of this vCPU; an unset one reads as all
    /// zeros.
    pub fn set_segment(&self, reg: SegmentReg, value: Segment) -> &Self {
        self.cpu().segments.insert(reg, value);
        self
    }

    /// Makes `[gpa, gpa + len)` guest RAM, zero-filled where it was not
    /// RAM already.
    pub fn map_ram(&self, gpa: u64, len: u64) -> &Self {
        let len = usize::try_from(len).expect("FakeHost::map_ram: the length fits in memory");
        if len > 0 {
            self.vm().memory.add_ram(gpa, len);
        }
        self
    }

    /// Makes `[gpa, gpa + bytes.len())` guest RAM holding `bytes`; over
    /// RAM already mapped this just writes the bytes.
    pub fn map_phys(&self, gpa: u64, bytes: &[u8]) -> &Self {
        self.vm().memory.map(gpa, bytes);
        self
    }

    /// Maps `[gva, gva + len)` onto `[gpa, gpa + len)` for `translate`,
    /// `read-virt` and `write-virt`, standing in for the guest's page
    /// tables (one address space for every vCPU). A GVA no mapping holds
    /// is `not-mapped`; where mappings overlap, the latest wins.
    pub fn map_virt(&self, gva: u64, gpa: u64, len: u64) -> &Self {
        self.vm().memory.map_virt(gva, gpa, len);
        self
    }

    /// Writes `bytes` at a mapped GVA, as test data.
    ///
    /// # Panics
    ///
    /// If a byte of the range is not mapped onto RAM.
    pub fn put_virt(&self, gva: u64, bytes: &[u8]) -> &Self {
        if let Err(e) = self.vm().memory.write_virt(gva, bytes) {
            panic!(
                "FakeHost::put_virt({gva:#x}, {} bytes): {}",
                bytes.len(),
                e.name()
            );
        }
        self
    }

    /// Grants capabilities, as the operator's `@grant=`.
    pub fn grant(&self, capabilities: Capabilities) -> &Self {
        self.vm().grants |= capabilities;
        self
    }

    /// Withdraws capabilities, to see how a policy takes a refusal.
    pub fn revoke(&self, capabilities: Capabilities) -> &Self {
        self.vm().grants -= capabilities;
        self
    }

    /// Grants interrupt line `line` to `set-irq-line`, as the operator's
    /// `@irq=`.
    pub fn grant_irq(&self, line: u32) -> &Self {
        self.vm().irq_granted.insert(line);
        self
    }

    /// Grants `snapshot-baseline` and `snapshot-reset`, as the operator's
    /// `@grant=snapshot`. Without it (the default) both are `not-granted`.
    pub fn grant_snapshot(&self) -> &Self {
        self.vm().snapshot_granted = true;
        self
    }

    /// Withdraws the snapshot grant: both imports are `not-granted` again.
    pub fn revoke_snapshot(&self) -> &Self {
        self.vm().snapshot_granted = false;
        self
    }

    /// Whether the VM can take snapshots at all: `false` stands for a VM
    /// with passed-through devices, where both imports are `unsupported`
    /// (once granted). Supported by default.
    pub fn set_snapshot_supported(&self, supported: bool) -> &Self {
        self.vm().snapshot_supported = supported;
        self
    }

    /// The ranges `dma-mappings` returns, as a VM with passthrough
    /// devices has DMA-mapped them.
    pub fn set_dma_mappings(&self, ranges: Vec<GpaRange>) -> &Self {
        self.vm().dma_mappings = ranges;
        self
    }

    /// Gives the VM a kernel profile: the symbols and type layouts the
    /// `kernel-*` imports answer from. Without one (the default, as for a
    /// VM booted with neither `--kernel` nor `--kernel-profile`) each of
    /// them is `unsupported`.
    pub fn set_kernel_profile(&self, profile: KernelProfile) -> &Self {
        self.vm().kernel = Some(profile);
        self
    }

    /// Takes the kernel profile away: the `kernel-*` imports answer
    /// `unsupported` again.
    pub fn clear_kernel_profile(&self) -> &Self {
        self.vm().kernel = None;
        self
    }

    /// Gives the VM an interrupt controller or takes it away; without one
    /// `set-irq-line` is `unsupported`.
    pub fn set_irqchip(&self, present: bool) -> &Self {
        self.vm().irqchip = present;
        self
    }

    // Reading the fake back.

    /// The vCPU this fake serves.
    pub fn vcpu_id(&self) -> u32 {
        self.cpu.borrow().id
    }

    /// The number of vCPUs of the VM.
    pub fn vcpu_count(&self) -> u32 {
        self.vm.borrow().vcpu_count
    }

    /// A register of this vCPU (0 if never set).
    pub fn reg(&self, reg: Reg) -> u64 {
        self.cpu.borrow().regs.get(&reg).copied().unwrap_or(0)
    }

    /// A segment register of this vCPU, as set by the test or the policy.
    pub fn segment(&self, reg: SegmentReg) -> Segment {
        self.cpu
            .borrow()
            .segments
            .get(&reg)
            .copied()
            .unwrap_or(NULL_SEGMENT)
    }

    /// The bytes at `[gpa, gpa + len)`, or `None` if not all RAM.
    pub fn phys(&self, gpa: u64, len: usize) -> Option<Vec<u8>> {
        self.vm.borrow().memory.read(gpa, len).ok()
    }

    /// The capabilities granted.
    pub fn grants(&self) -> Capabilities {
        self.vm.borrow().grants
    }

    /// A shared counter, `None` if no instance ever touched it.
    pub fn counter(&self, key: &str) -> Option<i64> {
        self.vm.borrow().counters.get(key).copied()
    }

    /// Every counter, sorted by key.
    pub fn counters(&self) -> Vec<(String, i64)> {
        let vm = self.vm.borrow();
        vm.counters.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Everything written with `console-write`.
    pub fn console(&self) -> Vec<u8> {
        self.vm.borrow().console.clone()
    }

    /// The console output as text (invalid UTF-8 replaced).
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&self.vm.borrow().console).into_owned()
    }

    /// Every `log` call, in order.
    pub fn logs(&self) -> Vec<LogLine> {
        self.vm.borrow().logs.clone()
    }

    /// Every `log` call so far, forgetting them.
    pub fn take_logs(&self) -> Vec<LogLine> {
        core::mem::take(&mut self.vm().logs)
    }

    /// Every `emit` call, in order.
    pub fn events(&self) -> Vec<Event> {
        self.vm.borrow().events.clone()
    }

    /// Makes `events_enabled` answer false, as the host does without
    /// `--events` (events emitted anyway are still recorded here).
    pub fn disable_events(&self) {
        self.vm.borrow_mut().events_off = true;
    }

    /// The payloads of the events of one kind, in order.
    pub fn events_of(&self, kind: &str) -> Vec<String> {
        let vm = self.vm.borrow();
        vm.events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.json.clone())
            .collect()
    }

    /// Every `emit` call so far, forgetting them.
    pub fn take_events(&self) -> Vec<Event> {
        core::mem::take(&mut self.vm().events)
    }

    /// The `protect` calls the host accepted, in order.
    pub fn protect_calls(&self) -> Vec<ProtectRequest> {
        self.vm.borrow().protects.clone()
    }

    /// The `unprotect` calls the host accepted, in order.
    pub fn unprotect_calls(&self) -> Vec<GpaRange> {
        self.vm.borrow().unprotects.clone()
    }

    /// This vCPU's breakpoints by slot (DR0-3).
    pub fn breakpoints(&self) -> [Option<Breakpoint>; 4] {
        self.cpu.borrow().breakpoints
    }

    /// True while single-stepping is on for this vCPU.
    pub fn single_stepping(&self) -> bool {
        self.cpu.borrow().single_step
    }

    /// The accepted `set-irq-line` calls as `(line, level)`, in order.
    pub fn irq_calls(&self) -> Vec<(u32, bool)> {
        self.vm.borrow().irq_calls.clone()
    }

    /// The accepted `snapshot-baseline` and `snapshot-reset` calls, in
    /// order. The fake only records them: it restores no memory, register
    /// or policy state (the test plays the guest).
    pub fn snapshot_calls(&self) -> Vec<SnapshotCall> {
        self.vm.borrow().snapshots.clone()
    }

    /// The accepted snapshot calls so far, forgetting them (a baseline
    /// already taken stays taken).
    pub fn take_snapshot_calls(&self) -> Vec<SnapshotCall> {
        core::mem::take(&mut self.vm().snapshots)
    }

    /// How many `snapshot-baseline` calls were accepted.
    pub fn baselines(&self) -> usize {
        self.count_snapshots(SnapshotCall::Baseline)
    }

    /// How many `snapshot-reset` calls were accepted.
    pub fn resets(&self) -> usize {
        self.count_snapshots(SnapshotCall::Reset)
    }

    fn count_snapshots(&self, kind: SnapshotCall) -> usize {
        let vm = self.vm.borrow();
        vm.snapshots.iter().filter(|c| **c == kind).count()
    }

    /// The constant answers this vCPU's instance declared during `init`.
    pub fn constants(&self) -> Vec<Constant> {
        self.cpu.borrow().constants.clone()
    }
}
