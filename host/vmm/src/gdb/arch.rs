//! The register file gdb sees: `gdbstub_arch`'s x86-64 core and SSE
//! registers, then the segment bases, IA32_KERNEL_GS_BASE and the control
//! registers a kernel debugger needs (`p $cr3`, `info registers efer`).
//!
//! gdb learns the layout from the target description below: the standard
//! `org.gnu.gdb.i386.core`, `.sse` and `.segments` features (gdb checks
//! their register names) and a `org.wasmvisor.x86.system` feature of our
//! own, whose registers gdb shows by name. A vCPU in 16- or 32-bit mode
//! is shown through the same 64-bit registers (docs/gdb.md).

use gdbstub::arch::{Arch, Registers};
use gdbstub_arch::x86::reg::id::X86_64CoreRegId;
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use wasmvisor_kvm::DebuggerRegs;

/// x86-64 with SSE and the system registers.
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

/// The whole register file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SystemRegs {
    pub core: X86_64CoreRegs,
    pub system: System,
}

/// Bytes of the core and SSE registers in a `g` packet.
const CORE_BYTES: usize = 0x218;

impl Registers for SystemRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for v in self.system.values() {
            for b in v.to_le_bytes() {
                write_byte(Some(b));
            }
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let core = bytes.get(..CORE_BYTES).ok_or(())?;
        self.core.gdb_deserialize(core)?;
        // gdb may send fewer registers than it was given; keep the rest.
        let rest = &bytes[CORE_BYTES..];
        for (slot, chunk) in self.system.slots().into_iter().zip(rest.chunks_exact(8)) {
            *slot = u64::from_le_bytes(chunk.try_into().map_err(|_| ())?);
        }
        Ok(())
    }
}

/// The kvm registers as gdb's register file.
pub(crate) fn to_gdb(r: &DebuggerRegs) -> SystemRegs {
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
/// descriptor.
pub(crate) fn from_gdb(regs: &SystemRegs, r: &mut DebuggerRegs) {
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

/// The target description gdb reads (`qXfer:features:read:target.xml`).
/// Register order is the `g` packet's.
const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386:x86-64</architecture>
<feature name="org.gnu.gdb.i386.core">
<flags id="x86_eflags" size="4">
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
<reg name="rax" bitsize="64" type="int64"/>
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
<reg name="cs" bitsize="32" type="int32"/>
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
<reg name="xmm8" bitsize="128" type="vec128"/>
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
<reg name="k_gs_base" bitsize="64" type="int" group="system"/>
<reg name="cr0" bitsize="64" type="int" group="system"/>
<reg name="cr2" bitsize="64" type="int" group="system"/>
<reg name="cr3" bitsize="64" type="int" group="system"/>
<reg name="cr4" bitsize="64" type="int" group="system"/>
<reg name="cr8" bitsize="64" type="int" group="system"/>
<reg name="efer" bitsize="64" type="int" group="system"/>
</feature>
</target>"#;

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
        let g = to_gdb(&r);
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
}
