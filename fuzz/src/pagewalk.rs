//! The guest page-table walker (`wasmvisor_exit::translate`), which reads
//! page tables the guest controls. Memory is the fuzzer's bytes mirrored
//! over a fuzzer-chosen physical size, so that every entry a walk follows
//! lands somewhere readable (deep walks without luck), or a small real
//! guest RAM holding the same bytes.
//!
//! Invariants: nothing panics, whatever CR0/CR3/CR4/EFER, MAXPHYADDR, address
//! or tables; a translation maps a page size the paging mode has, keeps the
//! offset inside the page, stays below MAXPHYADDR (40 bits for PSE-36), is
//! executable unless EFER.NXE is set in a PAE or long mode, and every other
//! address in the same page translates into the same frame with the same
//! rights; with paging off, the address maps to itself.

use std::sync::OnceLock;
use wasmvisor_exit::GuestRam;

use arbitrary::{Result, Unstructured};
use vm_memory::{Bytes, GuestAddress};
use wasmvisor_exit::{
    translate_with_maxphyaddr, PagingMode, PagingState, PhysRead, Translation, DEFAULT_MAXPHYADDR,
    MIN_MAXPHYADDR,
};

/// The input's bytes repeated over `[0, limit)`.
struct Mirror<'a> {
    bytes: &'a [u8],
    limit: u64,
}

impl Mirror<'_> {
    fn read<const N: usize>(&self, gpa: u64) -> Option<[u8; N]> {
        let end = gpa.checked_add(N as u64)?;
        if end > self.limit || self.bytes.is_empty() {
            return None;
        }
        let mut out = [0u8; N];
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.bytes[((gpa + i as u64) % self.bytes.len() as u64) as usize];
        }
        Some(out)
    }
}

impl PhysRead for Mirror<'_> {
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        self.read::<8>(gpa).map(u64::from_le_bytes)
    }
    fn read_u32(&self, gpa: u64) -> Option<u32> {
        self.read::<4>(gpa).map(u32::from_le_bytes)
    }
}

const RAM_SIZE: usize = 0x10000;

fn ram() -> &'static GuestRam {
    static MEM: OnceLock<GuestRam> = OnceLock::new();
    MEM.get_or_init(|| crate::ram(&[(0, RAM_SIZE)]))
}

fn check(paging: &PagingState, maxphyaddr: u8, gva: u64, t: &Translation) {
    let m = u32::from(maxphyaddr.clamp(MIN_MAXPHYADDR, DEFAULT_MAXPHYADDR));
    let mode = paging.mode();
    let sizes: &[u64] = match mode {
        PagingMode::None => &[1 << 12],
        PagingMode::Bits32 => &[1 << 12, 4 << 20],
        PagingMode::Pae => &[1 << 12, 2 << 20],
        PagingMode::Level4 | PagingMode::Level5 => &[1 << 12, 2 << 20, 1 << 30],
    };
    assert!(sizes.contains(&t.page_size), "{mode:?}: {t:?}");
    let offset = t.page_size - 1;
    assert_eq!(t.gpa & offset, gva & offset, "{t:?}");
    let width = if mode == PagingMode::Bits32 {
        m.min(40)
    } else {
        m
    };
    assert!(t.gpa >> width == 0, "{mode:?} M={m}: gpa {:#x}", t.gpa);
    let nxe = paging.efer & (1 << 11) != 0;
    if !nxe || matches!(mode, PagingMode::None | PagingMode::Bits32) {
        assert!(t.executable);
    }
    if mode == PagingMode::None {
        assert_eq!(t.gpa, gva);
        assert!(t.writable && t.user && t.executable);
    }
}

fn walk(mem: &impl PhysRead, paging: &PagingState, maxphyaddr: u8, gva: u64, other: u64) {
    match translate_with_maxphyaddr(mem, paging, gva, maxphyaddr) {
        Ok(t) => {
            check(paging, maxphyaddr, gva, &t);
            // Another address in the same page.
            let offset = t.page_size - 1;
            let gva2 = (gva & !offset) | (other & offset);
            let t2 = translate_with_maxphyaddr(mem, paging, gva2, maxphyaddr)
                .unwrap_or_else(|e| panic!("{gva:#x} maps but {gva2:#x} in its page faults: {e}"));
            assert_eq!(t2.page_size, t.page_size);
            assert_eq!(t2.gpa & !offset, t.gpa & !offset);
            assert_eq!(
                (t2.writable, t2.user, t2.executable),
                (t.writable, t.user, t.executable)
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    // Control registers: mostly the bits that pick the mode.
    let reg = |u: &mut Unstructured, mask: u64| -> Result<u64> {
        let v: u64 = u.arbitrary()?;
        Ok(if u.ratio(3, 4)? { v & mask } else { v })
    };
    let paging = PagingState {
        cr0: reg(u, 1 << 31)?,
        cr3: reg(u, 0xffff_f000 & (RAM_SIZE as u64 * 4 - 1))?,
        cr4: reg(u, (1 << 4) | (1 << 5) | (1 << 12))?,
        efer: reg(u, (1 << 10) | (1 << 11))?,
    };
    let maxphyaddr: u8 = if u.ratio(1, 2)? {
        DEFAULT_MAXPHYADDR
    } else {
        u.arbitrary()?
    };
    let gva: u64 = u.arbitrary()?;
    let other: u64 = u.arbitrary()?;
    let limit: u64 = if u.ratio(3, 4)? {
        u64::MAX
    } else {
        u.arbitrary()?
    };
    let bytes = u.bytes(u.len())?;

    walk(&Mirror { bytes, limit }, &paging, maxphyaddr, gva, other);

    // The same bytes in real guest RAM (the host's PhysRead).
    let mem = ram();
    let n = bytes.len().min(RAM_SIZE);
    mem.write_slice(&bytes[..n], GuestAddress(0))
        .expect("in RAM");
    walk(mem, &paging, maxphyaddr, gva, other);
    mem.write_slice(&vec![0u8; n], GuestAddress(0))
        .expect("in RAM");
    Ok(())
}

/// One fuzz input: never panics unless an invariant above is broken.
pub fn fuzz(data: &[u8]) {
    let _ = run(&mut Unstructured::new(data));
}
