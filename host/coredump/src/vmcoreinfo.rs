//! The VMCOREINFO note: `KEY=value` lines by which a Linux kernel tells a
//! dump reader where its data is (`kernel/crash_core.c`,
//! `Documentation/admin-guide/kdump/vmcoreinfo.rst`).
//!
//! A running kernel keeps this text in memory; a hypervisor that dumps a
//! guest without the guest's help writes its own, from the kernel image's
//! symbols: [`VmcoreInfo::for_linux_x86_64`].
//!
//! What drgn (0.2, 0.3) reads (`libdrgn/drgn_program_parse_vmcoreinfo.inc.strswitch`):
//!
//! * required, or it refuses the core: `OSRELEASE`, `PAGESIZE` (a power of
//!   two) and `SYMBOL(swapper_pg_dir)` (not zero);
//! * optional: `KERNELOFFSET` (hex, the KASLR offset; 0 when absent),
//!   `NUMBER(phys_base)`, `NUMBER(pgtable_l5_enabled)`, `BUILD-ID` (to
//!   find a matching vmlinux), `LENGTH(mem_section)`,
//!   `NUMBER(SECTION_SIZE_BITS)`, `NUMBER(MAX_PHYSMEM_BITS)`, `CRASHTIME`
//!   (present only in a kdump: it makes drgn look for registers in
//!   `crash_notes` rather than by CPU number, so a hypervisor must not
//!   write it);
//! * for symbols without a vmlinux (`drgn.helpers.linux.kallsyms
//!   .load_vmlinux_kallsyms`): `SYMBOL(kallsyms_names)`,
//!   `SYMBOL(kallsyms_token_table)`, `SYMBOL(kallsyms_token_index)`,
//!   `SYMBOL(kallsyms_num_syms)` (all four required),
//!   `SYMBOL(kallsyms_offsets)` with `SYMBOL(kallsyms_relative_base)`, or
//!   `SYMBOL(kallsyms_addresses)`, and `SYMBOL(_stext)`, by which it tells
//!   the address encodings apart.

use std::fmt::Write as _;

use crate::CoreError;

/// The text of a VMCOREINFO note, built line by line.
///
/// Every method checks that its key and value cannot break the line
/// format (no newline anywhere, no `=` in the key): values such as the
/// release string come from the guest's kernel image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmcoreInfo {
    text: String,
}

/// Facts about a Linux x86-64 kernel that its VMCOREINFO states besides
/// symbol addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxKernel<'a> {
    /// The kernel release (`uname -r`), e.g. `6.1.0-57-cloud-amd64`: the
    /// `release` of `init_uts_ns`, or the third word of `linux_banner`.
    pub release: &'a str,
    /// The KASLR offset: where the kernel text is minus where it was
    /// linked (0 without KASLR, as with the PVH entry).
    pub kaslr_offset: u64,
    /// The kernel's `phys_base`: where the kernel was loaded physically
    /// minus where it was linked to be (`0x1000000`); 0 when the loader
    /// put it at its link address.
    pub phys_base: u64,
    /// Whether the kernel runs on 5-level page tables.
    pub five_level_paging: bool,
    /// The vmlinux build ID (its `NT_GNU_BUILD_ID` note), by which drgn
    /// finds a matching vmlinux with debug info.
    pub build_id: Option<&'a [u8]>,
}

/// kallsyms tables whose addresses Linux 6.0+ writes to VMCOREINFO, and
/// two more that it does not but that cost nothing
/// (`kallsyms_markers`, `kallsyms_seqs_of_names`).
pub const KALLSYMS_TABLES: [&str; 9] = [
    "kallsyms_names",
    "kallsyms_num_syms",
    "kallsyms_token_table",
    "kallsyms_token_index",
    "kallsyms_offsets",
    "kallsyms_relative_base",
    "kallsyms_addresses",
    "kallsyms_markers",
    "kallsyms_seqs_of_names",
];

impl VmcoreInfo {
    /// An empty note text.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the line `key=value`.
    pub fn line(&mut self, key: &str, value: &str) -> Result<&mut Self, CoreError> {
        let invalid = |why| CoreError::InvalidVmcoreinfo {
            key: key.to_owned(),
            why,
        };
        if key.is_empty() {
            return Err(invalid("the key is empty"));
        }
        if key.contains(['=', '\n', '\0']) {
            return Err(invalid("the key holds '=', a newline or NUL"));
        }
        if value.contains(['\n', '\0']) {
            return Err(invalid("the value holds a newline or NUL"));
        }
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "{key}={value}");
        Ok(self)
    }

    /// `OSRELEASE=release`.
    pub fn osrelease(&mut self, release: &str) -> Result<&mut Self, CoreError> {
        // drgn's buffer holds 64 bytes plus a NUL (`struct new_utsname`).
        if release.is_empty() || release.len() > 64 {
            return Err(CoreError::InvalidVmcoreinfo {
                key: "OSRELEASE".into(),
                why: "the release must be 1 to 64 bytes long",
            });
        }
        self.line("OSRELEASE", release)
    }

    /// `PAGESIZE=size`, in decimal.
    pub fn page_size(&mut self, size: u64) -> Result<&mut Self, CoreError> {
        self.line("PAGESIZE", &size.to_string())
    }

    /// `BUILD-ID=hex`.
    pub fn build_id(&mut self, id: &[u8]) -> Result<&mut Self, CoreError> {
        let hex: String = id.iter().map(|byte| format!("{byte:02x}")).collect();
        self.line("BUILD-ID", &hex)
    }

    /// `SYMBOL(name)=address`, the address in hex without `0x`.
    pub fn symbol(&mut self, name: &str, address: u64) -> Result<&mut Self, CoreError> {
        self.line(&format!("SYMBOL({name})"), &format!("{address:x}"))
    }

    /// `NUMBER(name)=value`, in decimal (the kernel prints `%ld`).
    pub fn number(&mut self, name: &str, value: i64) -> Result<&mut Self, CoreError> {
        self.line(&format!("NUMBER({name})"), &value.to_string())
    }

    /// `OFFSET(member)=offset`, `member` as `struct.field`, in decimal.
    pub fn offset(&mut self, member: &str, offset: u64) -> Result<&mut Self, CoreError> {
        self.line(&format!("OFFSET({member})"), &offset.to_string())
    }

    /// `SIZE(name)=size`, in decimal.
    pub fn size(&mut self, name: &str, size: u64) -> Result<&mut Self, CoreError> {
        self.line(&format!("SIZE({name})"), &size.to_string())
    }

    /// `LENGTH(name)=length`, the element count of an array, in decimal.
    pub fn length(&mut self, name: &str, length: u64) -> Result<&mut Self, CoreError> {
        self.line(&format!("LENGTH({name})"), &length.to_string())
    }

    /// `KERNELOFFSET=offset`, the KASLR offset in hex without `0x`.
    pub fn kernel_offset(&mut self, offset: u64) -> Result<&mut Self, CoreError> {
        self.line("KERNELOFFSET", &format!("{offset:x}"))
    }

    /// The text, one `KEY=value\n` line after another.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value of the first line with this key, in any VMCOREINFO text.
    pub fn lookup<'t>(text: &'t str, key: &str) -> Option<&'t str> {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
    }

    /// The VMCOREINFO of a Linux x86-64 kernel, as far as it matters to
    /// dump readers, from the facts in `kernel` and its symbols.
    ///
    /// `symbol` returns a symbol's link-time address, as the kernel
    /// image's kallsyms or symbol table give it; this adds the KASLR
    /// offset. The kallsyms tables themselves are not in kallsyms (their
    /// names are on `scripts/kallsyms.c`'s ignore list), so `symbol` must
    /// answer for [`KALLSYMS_TABLES`] from wherever it found them.
    ///
    /// Lines, in the kernel's order: `OSRELEASE`, `BUILD-ID` (if given),
    /// `PAGESIZE=4096`, `SYMBOL(init_uts_ns)`, `SYMBOL(swapper_pg_dir)`
    /// (on x86-64 a name for `init_top_pgt`), `SYMBOL(_stext)`, the
    /// kallsyms tables, `NUMBER(phys_base)`, `SYMBOL(init_top_pgt)`,
    /// `NUMBER(pgtable_l5_enabled)`, `KERNELOFFSET`. Symbols the kernel
    /// lacks are left out, except the page table root, without which drgn
    /// refuses the core ([`CoreError::MissingSymbol`]).
    ///
    /// Left out because they need type layouts or memory, which a caller
    /// can add with the other methods: `OFFSET`/`SIZE` lines, and
    /// `SYMBOL(mem_section)`, whose value is the pointer stored in the
    /// variable `mem_section` (with `SPARSEMEM_EXTREME`), not its address.
    pub fn for_linux_x86_64(
        kernel: &LinuxKernel<'_>,
        symbol: &mut dyn FnMut(&str) -> Option<u64>,
    ) -> Result<Self, CoreError> {
        let mut lookup =
            |name: &str| symbol(name).map(|address| address.wrapping_add(kernel.kaslr_offset));
        let page_table_root = lookup("swapper_pg_dir")
            .or_else(|| lookup("init_top_pgt"))
            .ok_or(CoreError::MissingSymbol("init_top_pgt (swapper_pg_dir)"))?;

        let mut info = VmcoreInfo::new();
        info.osrelease(kernel.release)?;
        if let Some(id) = kernel.build_id {
            info.build_id(id)?;
        }
        info.page_size(4096)?;
        if let Some(address) = lookup("init_uts_ns") {
            info.symbol("init_uts_ns", address)?;
        }
        info.symbol("swapper_pg_dir", page_table_root)?;
        if let Some(address) = lookup("_stext") {
            info.symbol("_stext", address)?;
        }
        for name in KALLSYMS_TABLES {
            if let Some(address) = lookup(name) {
                info.symbol(name, address)?;
            }
        }
        // `phys_base` is at most 2^52; it fits an i64.
        info.number("phys_base", kernel.phys_base as i64)?;
        info.symbol("init_top_pgt", page_table_root)?;
        info.number("pgtable_l5_enabled", kernel.five_level_paging as i64)?;
        info.kernel_offset(kernel.kaslr_offset)?;
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_kernel_formats() {
        let mut info = VmcoreInfo::new();
        info.osrelease("6.1.0-57-cloud-amd64")
            .unwrap()
            .page_size(4096)
            .unwrap()
            .symbol("init_task", 0xffff_ffff_8261_4940)
            .unwrap()
            .number("phys_base", 0)
            .unwrap()
            .number("NEGATIVE", -1)
            .unwrap()
            .offset("task_struct.comm", 3008)
            .unwrap()
            .size("page", 64)
            .unwrap()
            .length("mem_section", 2048)
            .unwrap()
            .build_id(&[0x01, 0xd2, 0x64])
            .unwrap()
            .kernel_offset(0x2a00_0000)
            .unwrap();
        assert_eq!(
            info.as_str(),
            "OSRELEASE=6.1.0-57-cloud-amd64\n\
             PAGESIZE=4096\n\
             SYMBOL(init_task)=ffffffff82614940\n\
             NUMBER(phys_base)=0\n\
             NUMBER(NEGATIVE)=-1\n\
             OFFSET(task_struct.comm)=3008\n\
             SIZE(page)=64\n\
             LENGTH(mem_section)=2048\n\
             BUILD-ID=01d264\n\
             KERNELOFFSET=2a000000\n"
        );
        assert_eq!(VmcoreInfo::lookup(info.as_str(), "PAGESIZE"), Some("4096"));
        assert_eq!(
            VmcoreInfo::lookup(info.as_str(), "SYMBOL(init_task)"),
            Some("ffffffff82614940")
        );
        assert_eq!(VmcoreInfo::lookup(info.as_str(), "SYMBOL(init)"), None);
    }

    #[test]
    fn lines_cannot_be_injected() {
        let mut info = VmcoreInfo::new();
        assert!(info.osrelease("6.1\nSYMBOL(swapper_pg_dir)=0").is_err());
        assert!(info.osrelease("").is_err());
        assert!(info.osrelease(&"x".repeat(65)).is_err());
        assert!(info.symbol("a=b", 1).is_err());
        assert!(info.line("", "1").is_err());
        assert!(info.line("KEY", "a\0b").is_err());
        assert_eq!(info.as_str(), "");
    }

    fn symbols(name: &str) -> Option<u64> {
        match name {
            "init_top_pgt" => Some(0xffff_ffff_8260_a000),
            "_stext" => Some(0xffff_ffff_8100_0000),
            "init_uts_ns" => Some(0xffff_ffff_8261_2420),
            "kallsyms_names" => Some(0xffff_ffff_8230_0000),
            "kallsyms_num_syms" => Some(0xffff_ffff_822f_0000),
            "kallsyms_token_table" => Some(0xffff_ffff_8240_0000),
            "kallsyms_token_index" => Some(0xffff_ffff_8241_0000),
            "kallsyms_offsets" => Some(0xffff_ffff_8220_0000),
            "kallsyms_relative_base" => Some(0xffff_ffff_822e_0000),
            _ => None,
        }
    }

    #[test]
    fn linux_lines_are_what_drgn_needs() {
        let kernel = LinuxKernel {
            release: "6.1.0-57-cloud-amd64",
            kaslr_offset: 0x1000_0000,
            phys_base: 0x20_0000,
            five_level_paging: false,
            build_id: Some(&[0xab, 0xcd]),
        };
        let info = VmcoreInfo::for_linux_x86_64(&kernel, &mut symbols).unwrap();
        assert_eq!(
            info.as_str(),
            "OSRELEASE=6.1.0-57-cloud-amd64\n\
             BUILD-ID=abcd\n\
             PAGESIZE=4096\n\
             SYMBOL(init_uts_ns)=ffffffff92612420\n\
             SYMBOL(swapper_pg_dir)=ffffffff9260a000\n\
             SYMBOL(_stext)=ffffffff91000000\n\
             SYMBOL(kallsyms_names)=ffffffff92300000\n\
             SYMBOL(kallsyms_num_syms)=ffffffff922f0000\n\
             SYMBOL(kallsyms_token_table)=ffffffff92400000\n\
             SYMBOL(kallsyms_token_index)=ffffffff92410000\n\
             SYMBOL(kallsyms_offsets)=ffffffff92200000\n\
             SYMBOL(kallsyms_relative_base)=ffffffff922e0000\n\
             NUMBER(phys_base)=2097152\n\
             SYMBOL(init_top_pgt)=ffffffff9260a000\n\
             NUMBER(pgtable_l5_enabled)=0\n\
             KERNELOFFSET=10000000\n"
        );
    }

    #[test]
    fn the_page_table_root_is_required() {
        let kernel = LinuxKernel {
            release: "6.1.0",
            kaslr_offset: 0,
            phys_base: 0,
            five_level_paging: true,
            build_id: None,
        };
        let error = VmcoreInfo::for_linux_x86_64(&kernel, &mut |_| None).unwrap_err();
        assert!(matches!(error, CoreError::MissingSymbol(_)), "{error}");
        let info = VmcoreInfo::for_linux_x86_64(&kernel, &mut |name| {
            (name == "swapper_pg_dir").then_some(0x1000)
        })
        .unwrap();
        assert_eq!(
            VmcoreInfo::lookup(info.as_str(), "SYMBOL(swapper_pg_dir)"),
            Some("1000")
        );
        assert_eq!(
            VmcoreInfo::lookup(info.as_str(), "NUMBER(pgtable_l5_enabled)"),
            Some("1")
        );
        assert_eq!(VmcoreInfo::lookup(info.as_str(), "KERNELOFFSET"), Some("0"));
    }
}
