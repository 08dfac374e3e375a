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
    let len = body.len() as u64;
    // (offset, little-endian bytes) of every non-zero header field.
    let fields: [(usize, Vec<u8>); 11] = [
        (0, b"\x7fELF\x02\x01\x01".to_vec()), // ELF64, little-endian, v1
        (16, 2u16.to_le_bytes().to_vec()),    // ET_EXEC
        (18, 62u16.to_le_bytes().to_vec()),   // x86-64
        (32, 64u64.to_le_bytes().to_vec()),   // e_phoff
        (54, 56u16.to_le_bytes().to_vec()),   // e_phentsize
        (56, 1u16.to_le_bytes().to_vec()),    // e_phnum
        (64, 1u32.to_le_bytes().to_vec()),    // PT_LOAD
        (72, 120u64.to_le_bytes().to_vec()),  // p_offset: right after
        (80, 0xffff_ffff_8100_0000u64.to_le_bytes().to_vec()), // p_vaddr
        (88, 0x100_0000u64.to_le_bytes().to_vec()), // p_paddr
        (96, [len.to_le_bytes(), len.to_le_bytes()].concat()), // filesz, memsz
    ];
    let mut out = vec![0u8; 64 + 56];
    for (at, bytes) in fields {
        out[at..at + bytes.len()].copy_from_slice(&bytes);
    }
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
