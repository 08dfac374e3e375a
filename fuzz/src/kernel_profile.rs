//! The kernel-profile parsers (`wasmvisor_profile`) and the PVH image
//! reader (`wasmvisor_vmm::pvh`) on hostile images: BTF blobs, ELF images
//! around arbitrary bytes (where the kallsyms search runs), bzImage
//! payloads, and PVH ELFs.
//!
//! Invariants: nothing panics or allocates without bound; a decoded
//! symbol table is consistent (every symbol is found by its name at an
//! address that has that name or an alias, and symbolizing an address
//! never gives a symbol above it); a parsed PVH image's segments lie in
//! RAM above 1 MiB and contain its entry.

use wasmvisor_profile::{bzimage, Symbols, Types};
use wasmvisor_vmm::pvh;

/// A minimal ELF64 with one PT_LOAD at 0xffffffff81000000 holding `body`,
/// so the kallsyms search has a mapped image to work on.
fn elf_around(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 64 + 56];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    out[16..18].copy_from_slice(&2u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    let vaddr = 0xffff_ffff_8100_0000u64;
    out[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
    out[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
    out[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
    out[ph + 24..ph + 32].copy_from_slice(&0x100_0000u64.to_le_bytes());
    out[ph + 32..ph + 40].copy_from_slice(&(body.len() as u64).to_le_bytes());
    out[ph + 40..ph + 48].copy_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn check_symbols(symbols: &Symbols) {
    for s in symbols.iter().take(64) {
        let addr = symbols
            .lookup(s.name())
            .expect("a symbol is found by its name");
        if let Some((_, off)) = symbols.symbolize(addr) {
            assert!(off <= addr);
        }
    }
}

/// One fuzz input: never panics unless an invariant above is broken.
pub fn fuzz(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            let _ = Types::from_btf(rest).map(|t| {
                let _ = t.size_of("task_struct");
                let _ = t.offset_of("task_struct.tasks.next");
            });
        }
        1 => {
            if let Ok(symbols) = Symbols::from_elf(&elf_around(rest)) {
                check_symbols(&symbols);
            }
        }
        2 => {
            let _ = Symbols::from_elf(rest).map(|s| check_symbols(&s));
            let _ = Types::from_elf(rest);
        }
        3 => {
            let _ = bzimage::vmlinux(rest);
        }
        _ => {
            let ram = 64 << 20;
            if let Ok(image) = pvh::parse(rest, ram) {
                let entry = u64::from(image.entry);
                assert!(image
                    .segments
                    .iter()
                    .any(|s| (s.paddr..s.paddr + s.memsz).contains(&entry)));
                for s in &image.segments {
                    assert!(s.paddr >= pvh::LOAD_MIN && s.paddr + s.memsz <= ram);
                    assert!(s.data.len() as u64 <= s.memsz);
                }
            }
        }
    }
}
