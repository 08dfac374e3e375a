//! The register file gdb sees: `gdbstub_arch`'s x86-64 core and SSE
//! registers, then the segment bases, IA32_KERNEL_GS_BASE and the control
//! registers a kernel debugger needs (`p $cr3`, `info registers efer`).
//!
//! gdb learns the layout from the target description below: the standard
//! `org.gnu.gdb.i386.core`, `.sse` and `.segments` features (gdb checks
//! their register names) and a `org.wasmvisor.x86.system` feature of our
//! own, whose registers gdb shows by name.
//!
//! Two layouts, chosen when gdb attaches from vCPU 0's mode ([`Layout`]):
//! x86-64 for a vCPU in long mode, i386 (`gdbstub_arch`'s 32-bit core
//! and SSE registers: eax..edi, eip, xmm0-7; 32-bit segment bases) for
//! one in 32-bit protected or 16-bit real mode. The i386 one is served as
//! a runtime target description over the same [`X86_64System`] arch:
//! gdbstub's addresses stay 64-bit, which gdb's 32-bit ones fit.

use gdbstub::arch::{Arch, Registers};
use gdbstub_arch::x86::reg::id::X86_64CoreRegId;
use gdbstub_arch::x86::reg::{X86CoreRegs, X86_64CoreRegs};
use wasmvisor_kvm::DebuggerRegs;

/// EFER.LMA: the vCPU is in long mode.
const EFER_LMA: u64 = 1 << 10;

/// The register layout of a gdb session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// rax..r15, rip, xmm0-15: a vCPU in long mode.
    #[default]
    X86_64,
    /// eax..edi, eip, xmm0-7: a vCPU in 32-bit protected or real mode.
    I386,
}

impl Layout {
    /// The layout for a vCPU in the mode of `r`.
    pub fn of(r: &DebuggerRegs) -> Layout {
        if r.sregs.efer & EFER_LMA != 0 {
            Layout::X86_64
        } else {
            Layout::I386
        }
    }

    /// The target description gdb reads for this layout.
    pub fn target_xml(self) -> &'static str {
        match self {
            Layout::X86_64 => TARGET_XML,
            Layout::I386 => TARGET_XML_I386,
        }
    }
}

/// x86-64 with SSE and the system registers; the i386 layout is served
/// through it too ([`Layout`]).
pub(crate) enum X86_64System {}

impl Arch for X86_64System {
    type Usize = u64;
    type Registers = SystemRegs;
    type RegId = X86_64CoreRegId;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// What follows the core registers, in the order of [`TARGET_XML`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct System {
    pub fs_base: u64,
    pub gs_base: u64,
    pub k_gs_base: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
}

impl System {
    fn values(&self) -> [u64; 9] {
        [
            self.fs_base,
            self.gs_base,
            self.k_gs_base,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.cr8,
            self.efer,
        ]
    }

    fn slots(&mut self) -> [&mut u64; 9] {
        [
            &mut self.fs_base,
            &mut self.gs_base,
            &mut self.k_gs_base,
            &mut self.cr0,
            &mut self.cr2,
            &mut self.cr3,
            &mut self.cr4,
            &mut self.cr8,
            &mut self.efer,
        ]
    }
}

/// The whole register file. In the i386 layout the core holds the
/// 32-bit values in the low halves of their 64-bit registers (eax in
/// rax...), and r8-r15 and xmm8-15 are not part of it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SystemRegs {
    pub layout: Layout,
    pub core: X86_64CoreRegs,
    pub system: System,
}

/// Bytes of the core and SSE registers in a `g` packet.
const CORE_BYTES: usize = 0x218;
/// The same in the i386 layout.
const CORE_BYTES_I386: usize = 0x134;
/// The whole i386 file: the core, two 32-bit segment bases and seven
/// 64-bit system registers.
const I386_BYTES: usize = CORE_BYTES_I386 + 2 * 4 + 7 * 8;

/// Indices into [`X86_64CoreRegs::regs`].
const RAX: usize = 0;
const RBX: usize = 1;
const RCX: usize = 2;
const RDX: usize = 3;
const RSI: usize = 4;
const RDI: usize = 5;
const RBP: usize = 6;
const RSP: usize = 7;

impl SystemRegs {
    /// The i386 core registers: the low halves of the 64-bit ones.
    fn core_i386(&self) -> X86CoreRegs {
        let c = &self.core;
        let low = |i: usize| c.regs[i] as u32;
        let mut xmm = [0u128; 8];
        xmm.copy_from_slice(&c.xmm[..8]);
        X86CoreRegs {
            eax: low(RAX),
            ecx: low(RCX),
            edx: low(RDX),
            ebx: low(RBX),
            esp: low(RSP),
            ebp: low(RBP),
            esi: low(RSI),
            edi: low(RDI),
            eip: c.rip as u32,
            eflags: c.eflags,
            segments: c.segments.clone(),
            st: c.st,
            fpu: c.fpu.clone(),
            xmm,
            mxcsr: c.mxcsr,
        }
    }

    /// [`Self::core_i386`]'s inverse; what i386 lacks stays zero.
    fn set_core_i386(&mut self, x: &X86CoreRegs) {
        let c = &mut self.core;
        for (i, v) in [
            (RAX, x.eax),
            (RBX, x.ebx),
            (RCX, x.ecx),
            (RDX, x.edx),
            (RSI, x.esi),
            (RDI, x.edi),
            (RBP, x.ebp),
            (RSP, x.esp),
        ] {
            c.regs[i] = u64::from(v);
        }
        c.rip = u64::from(x.eip);
        c.eflags = x.eflags;
        c.segments = x.segments.clone();
        c.st = x.st;
        c.fpu = x.fpu.clone();
        c.xmm[..8].copy_from_slice(&x.xmm);
        c.mxcsr = x.mxcsr;
    }

    /// An i386 register file from gdb laid over the full one of `now`:
    /// the upper halves, r8-r15 and xmm8-15 stay as they are.
    fn widened(&self, now: &SystemRegs) -> SystemRegs {
        let mut out = self.clone();
        out.layout = Layout::X86_64;
        let merge = |old: u64, new: u64| (old & !0xffff_ffff) | (new & 0xffff_ffff);
        for i in 0..16 {
            out.core.regs[i] = if i <= RSP {
                merge(now.core.regs[i], self.core.regs[i])
            } else {
                now.core.regs[i]
            };
        }
        out.core.rip = merge(now.core.rip, self.core.rip);
        out.core.xmm[8..].copy_from_slice(&now.core.xmm[8..]);
        out.system.fs_base = merge(now.system.fs_base, self.system.fs_base);
        out.system.gs_base = merge(now.system.gs_base, self.system.gs_base);
        out
    }
}

impl Registers for SystemRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        match self.layout {
            Layout::X86_64 => self.core.rip,
            Layout::I386 => self.core.rip & 0xffff_ffff,
        }
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        let values = self.system.values();
        let system = match self.layout {
            Layout::X86_64 => {
                self.core.gdb_serialize(&mut write_byte);
                &values[..]
            }
            Layout::I386 => {
                self.core_i386().gdb_serialize(&mut write_byte);
                // fs_base and gs_base are 32 bits in i386's description.
                for v in &values[..2] {
                    for b in (*v as u32).to_le_bytes() {
                        write_byte(Some(b));
                    }
                }
                &values[2..]
            }
        };
        for v in system {
            for b in v.to_le_bytes() {
                write_byte(Some(b));
            }
        }
    }

    /// The layout is known by the length: the x86-64 core alone is longer
    /// than the whole i386 file.
    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let mut slots = self.system.slots().into_iter();
        if bytes.len() >= CORE_BYTES {
            self.layout = Layout::X86_64;
            self.core.gdb_deserialize(&bytes[..CORE_BYTES])?;
            // gdb may send fewer registers than it was given; keep the rest.
            for (slot, chunk) in slots.zip(bytes[CORE_BYTES..].chunks_exact(8)) {
                *slot = u64::from_le_bytes(chunk.try_into().map_err(|_| ())?);
            }
            return Ok(());
        }
        if bytes.len() > I386_BYTES {
            return Err(());
        }
        let core = bytes.get(..CORE_BYTES_I386).ok_or(())?;
        let mut x = X86CoreRegs::default();
        x.gdb_deserialize(core)?;
        let rest = &bytes[CORE_BYTES_I386..];
        let (bases, rest) = rest.split_at(rest.len().min(8));
        // The chunks first: zip would take a slot past the last base.
        for (chunk, slot) in bases.chunks_exact(4).zip(slots.by_ref()) {
            *slot = u64::from(u32::from_le_bytes(chunk.try_into().map_err(|_| ())?));
        }
        for (slot, chunk) in slots.zip(rest.chunks_exact(8)) {
            *slot = u64::from_le_bytes(chunk.try_into().map_err(|_| ())?);
        }
        self.layout = Layout::I386;
        self.set_core_i386(&x);
        Ok(())
    }
}

/// The kvm registers as gdb's register file, in `layout`.
pub(crate) fn to_gdb(r: &DebuggerRegs, layout: Layout) -> SystemRegs {
    let g = &r.regs;
    let s = &r.sregs;
    let f = &r.fpu;
    let mut core = X86_64CoreRegs {
        regs: [
            g.rax, g.rbx, g.rcx, g.rdx, g.rsi, g.rdi, g.rbp, g.rsp, g.r8, g.r9, g.r10, g.r11,
            g.r12, g.r13, g.r14, g.r15,
        ],
        eflags: g.rflags as u32,
        rip: g.rip,
        ..X86_64CoreRegs::default()
    };
    core.segments.cs = u32::from(s.cs.selector);
    core.segments.ss = u32::from(s.ss.selector);
    core.segments.ds = u32::from(s.ds.selector);
    core.segments.es = u32::from(s.es.selector);
    core.segments.fs = u32::from(s.fs.selector);
    core.segments.gs = u32::from(s.gs.selector);
    for (st, fpr) in core.st.iter_mut().zip(&f.fpr) {
        st.copy_from_slice(&fpr[..10]);
    }
    core.fpu.fctrl = u32::from(f.fcw);
    core.fpu.fstat = u32::from(f.fsw);
    core.fpu.ftag = full_tag_word(f.ftwx);
    core.fpu.fioff = f.last_ip as u32;
    core.fpu.fooff = f.last_dp as u32;
    core.fpu.fop = u32::from(f.last_opcode);
    for (x, bytes) in core.xmm.iter_mut().zip(&f.xmm) {
        *x = u128::from_le_bytes(*bytes);
    }
    core.mxcsr = f.mxcsr;
    SystemRegs {
        layout,
        core,
        system: System {
            fs_base: s.fs.base,
            gs_base: s.gs.base,
            k_gs_base: r.kernel_gs_base,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
        },
    }
}

/// gdb's register file written back over `r`. A segment selector changes
/// alone: its cached base and limit stay (only `fs_base`/`gs_base` move
/// those of FS and GS), as a debugger's write does not reload a
/// descriptor. In the i386 layout only the low halves of the registers it
/// has change.
pub(crate) fn from_gdb(regs: &SystemRegs, r: &mut DebuggerRegs) {
    let wide;
    let regs = match regs.layout {
        Layout::X86_64 => regs,
        Layout::I386 => {
            wide = regs.widened(&to_gdb(r, Layout::X86_64));
            &wide
        }
    };
    let c = &regs.core;
    let g = &mut r.regs;
    [
        g.rax, g.rbx, g.rcx, g.rdx, g.rsi, g.rdi, g.rbp, g.rsp, g.r8, g.r9, g.r10, g.r11, g.r12,
        g.r13, g.r14, g.r15,
    ] = c.regs;
    g.rip = c.rip;
    g.rflags = (g.rflags & !0xffff_ffff) | u64::from(c.eflags);
    let s = &mut r.sregs;
    s.cs.selector = c.segments.cs as u16;
    s.ss.selector = c.segments.ss as u16;
    s.ds.selector = c.segments.ds as u16;
    s.es.selector = c.segments.es as u16;
    s.fs.selector = c.segments.fs as u16;
    s.gs.selector = c.segments.gs as u16;
    s.fs.base = regs.system.fs_base;
    s.gs.base = regs.system.gs_base;
    s.cr0 = regs.system.cr0;
    s.cr2 = regs.system.cr2;
    s.cr3 = regs.system.cr3;
    s.cr4 = regs.system.cr4;
    s.cr8 = regs.system.cr8;
    s.efer = regs.system.efer;
    r.kernel_gs_base = regs.system.k_gs_base;
    let f = &mut r.fpu;
    for (fpr, st) in f.fpr.iter_mut().zip(&c.st) {
        fpr[..10].copy_from_slice(st);
    }
    f.fcw = c.fpu.fctrl as u16;
    f.fsw = c.fpu.fstat as u16;
    f.ftwx = abridged_tag_word(c.fpu.ftag);
    // gdb's are 32 bits: keep the upper half unless gdb changed the value.
    if f.last_ip as u32 != c.fpu.fioff {
        f.last_ip = u64::from(c.fpu.fioff);
    }
    if f.last_dp as u32 != c.fpu.fooff {
        f.last_dp = u64::from(c.fpu.fooff);
    }
    f.last_opcode = c.fpu.fop as u16;
    for (bytes, x) in f.xmm.iter_mut().zip(&c.xmm) {
        *bytes = x.to_le_bytes();
    }
    f.mxcsr = c.mxcsr;
}

/// FXSAVE's abridged tag byte (bit i: register i holds a value) as the
/// x87 tag word gdb shows (2 bits each: 00 valid, 11 empty).
fn full_tag_word(abridged: u8) -> u32 {
    (0..8)
        .filter(|i| abridged & (1 << i) == 0)
        .fold(0, |w, i| w | (0b11 << (2 * i)))
}

/// The inverse of [`full_tag_word`]: any tag but "empty" is in use.
fn abridged_tag_word(full: u32) -> u8 {
    (0..8)
        .filter(|i| (full >> (2 * i)) & 0b11 != 0b11)
        .fold(0, |b, i| b | (1 << i))
}

/// The eflags bits, as both descriptions show them.
macro_rules! eflags_type {
    () => {
        r#"<flags id="x86_eflags" size="4">
<field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>
<field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>
<field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
<field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>
<field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>
<field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
<field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>
<field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>
<field name="ID" start="21" end="21"/>
</flags>
"#
    };
}

/// The segment selectors and x87 registers, the same in both.
macro_rules! segments_and_x87 {
    () => {
        r#"<reg name="cs" bitsize="32" type="int32"/>
<reg name="ss" bitsize="32" type="int32"/>
<reg name="ds" bitsize="32" type="int32"/>
<reg name="es" bitsize="32" type="int32"/>
<reg name="fs" bitsize="32" type="int32"/>
<reg name="gs" bitsize="32" type="int32"/>
<reg name="st0" bitsize="80" type="i387_ext"/>
<reg name="st1" bitsize="80" type="i387_ext"/>
<reg name="st2" bitsize="80" type="i387_ext"/>
<reg name="st3" bitsize="80" type="i387_ext"/>
<reg name="st4" bitsize="80" type="i387_ext"/>
<reg name="st5" bitsize="80" type="i387_ext"/>
<reg name="st6" bitsize="80" type="i387_ext"/>
<reg name="st7" bitsize="80" type="i387_ext"/>
<reg name="fctrl" bitsize="32" type="int" group="float"/>
<reg name="fstat" bitsize="32" type="int" group="float"/>
<reg name="ftag" bitsize="32" type="int" group="float"/>
<reg name="fiseg" bitsize="32" type="int" group="float"/>
<reg name="fioff" bitsize="32" type="int" group="float"/>
<reg name="foseg" bitsize="32" type="int" group="float"/>
<reg name="fooff" bitsize="32" type="int" group="float"/>
<reg name="fop" bitsize="32" type="int" group="float"/>
</feature>
<feature name="org.gnu.gdb.i386.sse">
<vector id="v4f" type="ieee_single" count="4"/>
<vector id="v2d" type="ieee_double" count="2"/>
<vector id="v16i8" type="int8" count="16"/>
<vector id="v8i16" type="int16" count="8"/>
<vector id="v4i32" type="int32" count="4"/>
<vector id="v2i64" type="int64" count="2"/>
<union id="vec128">
<field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
<field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
<field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
<field name="uint128" type="uint128"/>
</union>
<reg name="xmm0" bitsize="128" type="vec128"/>
<reg name="xmm1" bitsize="128" type="vec128"/>
<reg name="xmm2" bitsize="128" type="vec128"/>
<reg name="xmm3" bitsize="128" type="vec128"/>
<reg name="xmm4" bitsize="128" type="vec128"/>
<reg name="xmm5" bitsize="128" type="vec128"/>
<reg name="xmm6" bitsize="128" type="vec128"/>
<reg name="xmm7" bitsize="128" type="vec128"/>
"#
    };
}

/// Our own feature's system registers, 64 bits in both.
macro_rules! system_regs {
    () => {
        r#"<reg name="k_gs_base" bitsize="64" type="int" group="system"/>
<reg name="cr0" bitsize="64" type="int" group="system"/>
<reg name="cr2" bitsize="64" type="int" group="system"/>
<reg name="cr3" bitsize="64" type="int" group="system"/>
<reg name="cr4" bitsize="64" type="int" group="system"/>
<reg name="cr8" bitsize="64" type="int" group="system"/>
<reg name="efer" bitsize="64" type="int" group="system"/>
</feature>
</target>"#
    };
}

/// The target description gdb reads (`qXfer:features:read:target.xml`)
/// for the x86-64 layout. Register order is the `g` packet's.
const TARGET_XML: &str = concat!(
    r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386:x86-64</architecture>
<feature name="org.gnu.gdb.i386.core">
"#,
    eflags_type!(),
    r#"<reg name="rax" bitsize="64" type="int64"/>
<reg name="rbx" bitsize="64" type="int64"/>
<reg name="rcx" bitsize="64" type="int64"/>
<reg name="rdx" bitsize="64" type="int64"/>
<reg name="rsi" bitsize="64" type="int64"/>
<reg name="rdi" bitsize="64" type="int64"/>
<reg name="rbp" bitsize="64" type="data_ptr"/>
<reg name="rsp" bitsize="64" type="data_ptr"/>
<reg name="r8" bitsize="64" type="int64"/>
<reg name="r9" bitsize="64" type="int64"/>
<reg name="r10" bitsize="64" type="int64"/>
<reg name="r11" bitsize="64" type="int64"/>
<reg name="r12" bitsize="64" type="int64"/>
<reg name="r13" bitsize="64" type="int64"/>
<reg name="r14" bitsize="64" type="int64"/>
<reg name="r15" bitsize="64" type="int64"/>
<reg name="rip" bitsize="64" type="code_ptr"/>
<reg name="eflags" bitsize="32" type="x86_eflags"/>
"#,
    segments_and_x87!(),
    r#"<reg name="xmm8" bitsize="128" type="vec128"/>
<reg name="xmm9" bitsize="128" type="vec128"/>
<reg name="xmm10" bitsize="128" type="vec128"/>
<reg name="xmm11" bitsize="128" type="vec128"/>
<reg name="xmm12" bitsize="128" type="vec128"/>
<reg name="xmm13" bitsize="128" type="vec128"/>
<reg name="xmm14" bitsize="128" type="vec128"/>
<reg name="xmm15" bitsize="128" type="vec128"/>
<reg name="mxcsr" bitsize="32" type="int" group="vector"/>
</feature>
<feature name="org.gnu.gdb.i386.segments">
<reg name="fs_base" bitsize="64" type="int"/>
<reg name="gs_base" bitsize="64" type="int"/>
</feature>
<feature name="org.wasmvisor.x86.system">
"#,
    system_regs!()
);

/// The same for the i386 layout (gdb's `32bit-core` and `32bit-sse`
/// features). The segment bases are in our own feature: gdb 13's i386
/// numbers `org.gnu.gdb.i386.segments` past its register count and
/// fails an internal assertion.
const TARGET_XML_I386: &str = concat!(
    r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386</architecture>
<feature name="org.gnu.gdb.i386.core">
"#,
    eflags_type!(),
    r#"<reg name="eax" bitsize="32" type="int32"/>
<reg name="ecx" bitsize="32" type="int32"/>
<reg name="edx" bitsize="32" type="int32"/>
<reg name="ebx" bitsize="32" type="int32"/>
<reg name="esp" bitsize="32" type="data_ptr"/>
<reg name="ebp" bitsize="32" type="data_ptr"/>
<reg name="esi" bitsize="32" type="int32"/>
<reg name="edi" bitsize="32" type="int32"/>
<reg name="eip" bitsize="32" type="code_ptr"/>
<reg name="eflags" bitsize="32" type="x86_eflags"/>
"#,
    segments_and_x87!(),
    r#"<reg name="mxcsr" bitsize="32" type="int" group="vector"/>
</feature>
<feature name="org.wasmvisor.x86.system">
<reg name="fs_base" bitsize="32" type="int" group="system"/>
<reg name="gs_base" bitsize="32" type="int" group="system"/>
"#,
    system_regs!()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_register_file_round_trips_through_gdb_bytes_and_kvm() {
        let mut r = DebuggerRegs::default();
        r.regs.rax = 1;
        r.regs.r15 = 15;
        r.regs.rip = 0xffff_ffff_8010_1000;
        r.regs.rflags = 0x246;
        r.sregs.cs.selector = 0x10;
        r.sregs.gs.base = 0xffff_ffff_8010_3000;
        r.sregs.cr3 = 0x104000;
        r.sregs.efer = 0xd01;
        r.kernel_gs_base = 7;
        r.fpu.xmm[3] = [0xab; 16];
        r.fpu.mxcsr = 0x1f80;
        r.fpu.ftwx = 0b1000_0001;
        let g = to_gdb(&r, Layout::X86_64);
        assert_eq!(g.system.cr3, 0x104000);
        assert_eq!(g.core.fpu.ftag, 0b0011_1111_1111_1100);
        let mut bytes = Vec::new();
        g.gdb_serialize(|b| bytes.push(b.unwrap()));
        assert_eq!(bytes.len(), CORE_BYTES + 9 * 8);
        // efer is the last register.
        assert_eq!(bytes[bytes.len() - 8..], 0xd01u64.to_le_bytes());
        let mut back = SystemRegs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, g);
        let mut r2 = DebuggerRegs::default();
        from_gdb(&back, &mut r2);
        assert_eq!(r2, r);
        // A short packet keeps what it does not carry.
        let mut short = back.clone();
        short.system.cr3 = 0;
        short.gdb_deserialize(&bytes[..CORE_BYTES]).unwrap();
        assert_eq!(short.system.cr3, 0);
        assert!(back.gdb_deserialize(&bytes[..CORE_BYTES - 1]).is_err());
    }

    #[test]
    fn the_description_lists_the_registers_in_g_packet_order() {
        let names: Vec<&str> = TARGET_XML
            .split("<reg name=\"")
            .skip(1)
            .map(|s| &s[..s.find('"').unwrap()])
            .collect();
        assert_eq!(names.len(), 57 + 9);
        assert_eq!(&names[..3], ["rax", "rbx", "rcx"]);
        assert_eq!(names[16], "rip");
        assert_eq!(names[56], "mxcsr");
        assert_eq!(
            &names[57..],
            [
                "fs_base",
                "gs_base",
                "k_gs_base",
                "cr0",
                "cr2",
                "cr3",
                "cr4",
                "cr8",
                "efer"
            ]
        );
    }

    #[test]
    fn the_i386_file_shows_and_writes_the_low_halves() {
        let mut r = DebuggerRegs::default();
        r.regs.rax = 0xdead_beef_0000_81b2;
        r.regs.rcx = 2;
        r.regs.rsp = 0x7000;
        r.regs.r8 = 8;
        r.regs.rip = 0x8000;
        r.regs.rflags = 0x2;
        r.sregs.cs.selector = 0x8;
        r.sregs.fs.base = 0x1_0000_2000;
        r.sregs.cr0 = 0x11;
        r.sregs.efer = 0;
        r.fpu.xmm[7] = [7; 16];
        r.fpu.xmm[9] = [9; 16];
        assert_eq!(Layout::of(&r), Layout::I386);
        let g = to_gdb(&r, Layout::I386);
        assert_eq!(g.pc(), 0x8000);
        let mut bytes = Vec::new();
        g.gdb_serialize(|b| bytes.push(b.unwrap()));
        assert_eq!(bytes.len(), I386_BYTES);
        // eax, ecx, edx, ebx, esp: gdb's i386 order.
        assert_eq!(bytes[..4], 0x81b2u32.to_le_bytes());
        assert_eq!(bytes[4..8], 2u32.to_le_bytes());
        assert_eq!(bytes[16..20], 0x7000u32.to_le_bytes());
        assert_eq!(bytes[32..36], 0x8000u32.to_le_bytes());
        assert_eq!(bytes[CORE_BYTES_I386..][..4], 0x2000u32.to_le_bytes());
        // cr0 after fs_base, gs_base and k_gs_base.
        assert_eq!(bytes[CORE_BYTES_I386 + 16..][..8], 0x11u64.to_le_bytes());
        // gdb writes eax and eip: the upper halves, r8 and xmm9 stay.
        let mut back = SystemRegs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back.layout, Layout::I386);
        back.core.regs[RAX] = 5;
        back.core.rip = 0x8005;
        let mut r2 = r;
        from_gdb(&back, &mut r2);
        assert_eq!(r2.regs.rax, 0xdead_beef_0000_0005);
        assert_eq!(r2.regs.rip, 0x8005);
        assert_eq!(r2.regs.r8, 8);
        assert_eq!(r2.sregs.fs.base, 0x1_0000_2000);
        assert_eq!(r2.fpu.xmm[9], [9; 16]);
        r2.regs.rax = r.regs.rax;
        r2.regs.rip = r.regs.rip;
        assert_eq!(r2, r);
        // Too long for i386, too short for x86-64.
        assert!(back.gdb_deserialize(&[0; I386_BYTES + 1]).is_err());
        r.sregs.efer = 0x500;
        assert_eq!(Layout::of(&r), Layout::X86_64);
    }

    #[test]
    fn the_i386_description_lists_the_registers_in_g_packet_order() {
        let names: Vec<&str> = TARGET_XML_I386
            .split("<reg name=\"")
            .skip(1)
            .map(|s| &s[..s.find('"').unwrap()])
            .collect();
        assert_eq!(names.len(), 41 + 9);
        assert_eq!(&names[..4], ["eax", "ecx", "edx", "ebx"]);
        assert_eq!(names[8], "eip");
        assert_eq!(names[32], "xmm0");
        assert_eq!(names[40], "mxcsr");
        assert_eq!(&names[41..43], ["fs_base", "gs_base"]);
        assert_eq!(names[49], "efer");
        assert!(TARGET_XML_I386.contains("<architecture>i386</architecture>"));
    }
}
