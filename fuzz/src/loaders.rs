//! The flat and ELF64 guest loaders (`wasmvisor_vmm::loader`) against a
//! small real guest RAM. Inputs are raw images (the fuzzer's own bytes,
//! seeded with the example guests), or ELF images built from structured
//! fields biased towards the RAM's edges, so that the deep checks (segment
//! bounds, overlap, reserved area) are reached quickly.
//!
//! Invariants: nothing panics; on error guest RAM is byte-for-byte
//! unchanged; on success every changed byte lies in RAM at or above the
//! host-reserved end (0x8000) and inside the reported [start, end), the
//! flat image / each segment's file bytes are in RAM where they belong,
//! and the rest of each segment's memory size is zero.

use std::sync::OnceLock;
use wasmvisor_exit::GuestRam;

use crate as f;
use arbitrary::{Result, Unstructured};
use vm_memory::{Bytes, GuestAddress};
use wasmvisor_kvm::HOST_RESERVED_END;
use wasmvisor_vmm::loader::{is_elf, load_elf, load_flat, Loaded};

const RAM_SIZE: u64 = 0x20000;
const ADDR_HINTS: &[u64] = &[
    0,
    0x7fff,
    0x8000,
    0x9000,
    0x1_0000,
    0x1_f000,
    RAM_SIZE,
    u64::MAX,
];

fn mem() -> &'static GuestRam {
    static MEM: OnceLock<GuestRam> = OnceLock::new();
    MEM.get_or_init(|| f::ram(&[(0, RAM_SIZE as usize)]))
}

struct Seg {
    p_type: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// An ELF64 image from structured fields; mostly valid headers.
fn build_elf(u: &mut Unstructured) -> Result<(Vec<u8>, Vec<Seg>)> {
    let nseg = u.int_in_range(0..=4usize)?;
    let phoff = 64u64;
    let data_start = phoff + 56 * nseg as u64;
    let payload_len = u.int_in_range(0..=0x200usize)?;
    let total = data_start as usize + payload_len;
    let mut segs = Vec::new();
    for _ in 0..nseg {
        let p_type = if u.ratio(7, 8)? { 1 } else { u.arbitrary()? };
        let offset = if u.ratio(7, 8)? {
            data_start + u.int_in_range(0..=payload_len as u64)?
        } else {
            u.arbitrary()?
        };
        let room = (total as u64).saturating_sub(offset);
        let filesz = if u.ratio(7, 8)? {
            u.int_in_range(0..=room)?
        } else {
            u.arbitrary()?
        };
        let memsz = if u.ratio(3, 4)? {
            filesz.saturating_add(u.int_in_range(0..=0x300)?)
        } else {
            f::pick_u64(u, &[0, filesz, RAM_SIZE])?
        };
        segs.push(Seg {
            p_type,
            offset,
            paddr: f::pick_u64(u, ADDR_HINTS)?,
            filesz,
            memsz,
        });
    }
    let mut out = vec![0u8; data_start as usize];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = if u.ratio(15, 16)? { 2 } else { u.arbitrary()? };
    out[5] = if u.ratio(15, 16)? { 1 } else { u.arbitrary()? };
    out[6] = 1;
    let e_type: u16 = if u.ratio(15, 16)? { 2 } else { u.arbitrary()? };
    let machine: u16 = if u.ratio(15, 16)? { 62 } else { u.arbitrary()? };
    let phentsize: u16 = if u.ratio(15, 16)? { 56 } else { u.arbitrary()? };
    let phnum: u16 = if u.ratio(15, 16)? {
        nseg as u16
    } else {
        u.arbitrary()?
    };
    let phoff_field = if u.ratio(15, 16)? {
        phoff
    } else {
        u.arbitrary()?
    };
    out[16..18].copy_from_slice(&e_type.to_le_bytes());
    out[18..20].copy_from_slice(&machine.to_le_bytes());
    out[24..32].copy_from_slice(&f::pick_u64(u, ADDR_HINTS)?.to_le_bytes());
    out[32..40].copy_from_slice(&phoff_field.to_le_bytes());
    out[54..56].copy_from_slice(&phentsize.to_le_bytes());
    out[56..58].copy_from_slice(&phnum.to_le_bytes());
    for (i, s) in segs.iter().enumerate() {
        let b = 64 + i * 56;
        out[b..b + 4].copy_from_slice(&s.p_type.to_le_bytes());
        out[b + 8..b + 16].copy_from_slice(&s.offset.to_le_bytes());
        out[b + 16..b + 24].copy_from_slice(&s.paddr.to_le_bytes());
        out[b + 24..b + 32].copy_from_slice(&s.paddr.to_le_bytes());
        out[b + 32..b + 40].copy_from_slice(&s.filesz.to_le_bytes());
        out[b + 40..b + 48].copy_from_slice(&s.memsz.to_le_bytes());
    }
    let payload = u.bytes(payload_len.min(u.len()))?;
    out.extend_from_slice(payload);
    out.resize(total, 0x5a);
    // The segment list describes the image only if the header points at it.
    let faithful = phoff_field == phoff && usize::from(phnum) == nseg && phentsize == 56;
    Ok((out, if faithful { segs } else { Vec::new() }))
}

/// What RAM holds before every load: never zero, so that zeroed .bss
/// shows up too.
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..RAM_SIZE)
            .map(|i| (i as u8 ^ 0xa5).wrapping_mul(3) | 1)
            .collect()
    })
}

fn ram_bytes(mem: &GuestRam) -> Vec<u8> {
    let mut buf = vec![0u8; RAM_SIZE as usize];
    mem.read_slice(&mut buf, GuestAddress(0)).expect("RAM");
    buf
}

/// Every changed byte lies in [max(start, 0x8000), end) inside RAM.
fn check_changes(before: &[u8], after: &[u8], l: &Loaded) {
    assert!(l.start >= HOST_RESERVED_END, "{l:?}");
    assert!(l.start <= l.end && l.end <= RAM_SIZE, "{l:?}");
    let (lo, hi) = (l.start as usize, l.end as usize);
    assert!(before[..lo] == after[..lo], "bytes below {lo:#x} changed");
    assert!(before[hi..] == after[hi..], "bytes above {hi:#x} changed");
}

fn run(u: &mut Unstructured) -> Result<()> {
    let mem = mem();
    let before = pattern();
    mem.write_slice(before, GuestAddress(0)).expect("RAM");
    match u.int_in_range(0..=2u8)? {
        0 => {
            let addr = f::pick_u64(u, ADDR_HINTS)?;
            let image = u.bytes(u.len())?;
            match load_flat(mem, image, addr) {
                Err(_) => assert!(ram_bytes(mem) == before, "failed flat load changed RAM"),
                Ok(l) => {
                    let after = ram_bytes(mem);
                    check_changes(before, &after, &l);
                    assert_eq!((l.entry, l.start), (addr, addr));
                    assert_eq!(l.end - l.start, image.len() as u64);
                    assert_eq!(&after[addr as usize..l.end as usize], image);
                }
            }
        }
        1 => {
            let image = u.bytes(u.len())?;
            check_elf(mem, before, image, None);
        }
        _ => {
            let (image, segs) = build_elf(u)?;
            check_elf(mem, before, &image, Some(&segs));
        }
    }
    Ok(())
}

fn check_elf(mem: &GuestRam, before: &[u8], image: &[u8], segs: Option<&[Seg]>) {
    match load_elf(mem, image) {
        Err(_) => assert!(ram_bytes(mem) == before, "failed ELF load changed RAM"),
        Ok(l) => {
            assert!(is_elf(image));
            let after = ram_bytes(mem);
            check_changes(before, &after, &l);
            for s in segs.unwrap_or_default().iter().filter(|s| s.p_type == 1) {
                let file = &image[s.offset as usize..(s.offset + s.filesz) as usize];
                let at = s.paddr as usize;
                assert_eq!(&after[at..at + file.len()], file);
                let bss = &after[at + file.len()..(s.paddr + s.memsz) as usize];
                assert!(bss.iter().all(|&b| b == 0), "bss not zeroed");
            }
            let mut probe = [0u8; 1];
            if l.end > l.start {
                mem.read_slice(&mut probe, GuestAddress(l.end - 1))
                    .expect("loaded end lies in RAM");
            }
        }
    }
}

/// One fuzz input: never panics unless an invariant above is broken.
pub fn fuzz(data: &[u8]) {
    let _ = run(&mut Unstructured::new(data));
}
