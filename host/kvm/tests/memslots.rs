//! The memslot layout on real KVM: thousands of random protect and
//! unprotect operations, checked against a page-by-page model. Guest RAM
//! must come out byte-for-byte unchanged, every page's protection must
//! match the model, and the number of memslots must stay bounded by the
//! number of protected runs.

use vm_memory::{Bytes, GuestAddress};
use wasmvisor_exit::{GpaRange, MemoryProtector, Protection, PAGE_SIZE};
use wasmvisor_kvm::Vm;
use wasmvisor_tests::require_kvm;

const PAGES: u64 = 1024; // 4 MiB of RAM

/// A small deterministic generator (xorshift), so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_protect_unprotect_matches_model_and_keeps_ram() {
    require_kvm!();
    let vm = Vm::new(PAGES * PAGE_SIZE).expect("VM");
    let mem = vm.memory();
    // A recognisable pattern in every page.
    for page in 0..PAGES {
        let bytes: Vec<u8> = (0..PAGE_SIZE).map(|i| (page as u8) ^ (i as u8)).collect();
        mem.write_slice(&bytes, GuestAddress(page * PAGE_SIZE))
            .unwrap();
    }
    let before: Vec<u8> = {
        let mut v = vec![0u8; (PAGES * PAGE_SIZE) as usize];
        mem.read_slice(&mut v, GuestAddress(0)).unwrap();
        v
    };
    let slots = vm.memslots();
    let mut model = vec![None; PAGES as usize];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut max_slots = 0;
    for _ in 0..4000 {
        let first = rng.next() % PAGES;
        let pages = (1 + rng.next() % 16).min(PAGES - first);
        let range = GpaRange {
            base: first * PAGE_SIZE,
            len: pages * PAGE_SIZE,
        };
        let mode = match rng.next() % 3 {
            0 => None,
            1 => Some(Protection::WriteProtect),
            _ => Some(Protection::NoAccess),
        };
        match mode {
            Some(m) => slots.protect(range, m).unwrap(),
            None => slots.unprotect(range).unwrap(),
        }
        for p in &mut model[first as usize..(first + pages) as usize] {
            *p = mode;
        }
        // Slots: one per run that is not a hole, and runs are maximal.
        let runs = 1 + model.windows(2).filter(|w| w[0] != w[1]).count();
        let holes = model
            .iter()
            .enumerate()
            .filter(|(i, m)| **m == Some(Protection::NoAccess) && (*i == 0 || model[i - 1] != **m))
            .count();
        assert_eq!(slots.slot_count(), runs - holes);
        max_slots = max_slots.max(slots.slot_count());
    }
    for (page, want) in model.iter().enumerate() {
        assert_eq!(slots.lookup(page as u64 * PAGE_SIZE), *want, "page {page}");
    }
    // Unprotect everything: one slot again, and RAM never changed.
    slots
        .unprotect(GpaRange {
            base: 0,
            len: PAGES * PAGE_SIZE,
        })
        .unwrap();
    assert_eq!(slots.slot_count(), 1);
    let mut after = vec![0u8; before.len()];
    mem.read_slice(&mut after, GuestAddress(0)).unwrap();
    assert!(before == after, "guest RAM changed");
    assert!(
        max_slots <= PAGES as usize,
        "slot count {max_slots} unbounded"
    );
}
