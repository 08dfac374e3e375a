//! Which guest-physical pages are protected, and the memslot layout that
//! follows from it.
//!
//! Stock KVM has no user-space EPT-violation exit, so protection is done
//! with the memslot layout: a write-protected page lives in a read-only
//! slot (writes exit as MMIO with their data), a no-access page has no
//! slot at all (every access exits). [`ProtectionMap`] keeps the
//! protection of each 4 KiB page and turns it into the fewest runs of equal
//! protection, which the KVM layer maps one-to-one onto memslots.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::{GpaRange, Protection};

/// Protection granularity.
pub const PAGE_SIZE: u64 = 4096;

/// A protect or unprotect request the map refuses.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtectError {
    #[error("range {base:#x}+{len:#x} is not 4 KiB-aligned")]
    Unaligned { base: u64, len: u64 },
    #[error("range {base:#x}+{len:#x} is not inside guest RAM")]
    OutsideRam { base: u64, len: u64 },
    #[error("stock KVM cannot trap instruction fetches: execute protection is not available")]
    NoExecute,
    #[error("the KVM memslot update failed: {0}")]
    Backend(String),
}

/// Changes and looks up page protections; the KVM layer implements it
/// over memslots, tests over a plain [`ProtectionMap`].
pub trait MemoryProtector: Send + Sync {
    /// Protects a page-aligned range of RAM.
    fn protect(&self, range: GpaRange, mode: Protection) -> Result<(), ProtectError>;
    /// Removes protection from a page-aligned range of RAM.
    fn unprotect(&self, range: GpaRange) -> Result<(), ProtectError>;
    /// The protection of the page holding `gpa`.
    fn lookup(&self, gpa: u64) -> Option<Protection>;
}

impl MemoryProtector for std::sync::Mutex<ProtectionMap> {
    fn protect(&self, range: GpaRange, mode: Protection) -> Result<(), ProtectError> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .protect(range, mode)
    }
    fn unprotect(&self, range: GpaRange) -> Result<(), ProtectError> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .unprotect(range)
    }
    fn lookup(&self, gpa: u64) -> Option<Protection> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .lookup(gpa)
    }
}

/// A maximal run of pages with the same protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub base: u64,
    pub len: u64,
    /// `None` for ordinary RAM.
    pub mode: Option<Protection>,
}

/// Protection of every page of guest RAM `[0, ram_size)`.
#[derive(Debug, Clone)]
pub struct ProtectionMap {
    ram_size: u64,
    /// Protected pages only: page number → mode. Kept as ranges of equal
    /// mode, `start page → (end page exclusive, mode)`, merged eagerly.
    ranges: BTreeMap<u64, (u64, Protection)>,
}

impl ProtectionMap {
    /// No page protected.
    pub fn new(ram_size: u64) -> ProtectionMap {
        ProtectionMap {
            ram_size,
            ranges: BTreeMap::new(),
        }
    }

    fn check(&self, range: GpaRange) -> Result<(u64, u64), ProtectError> {
        let GpaRange { base, len } = range;
        if !base.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) || len == 0 {
            return Err(ProtectError::Unaligned { base, len });
        }
        match base.checked_add(len) {
            Some(end) if end <= self.ram_size => Ok((base / PAGE_SIZE, end / PAGE_SIZE)),
            _ => Err(ProtectError::OutsideRam { base, len }),
        }
    }

    /// Sets pages `[first, end)` to `mode` (`None` = unprotected).
    fn set(&mut self, first: u64, end: u64, mode: Option<Protection>) {
        // Cut existing ranges at both ends, then drop everything inside.
        let overlapping: Vec<(u64, (u64, Protection))> = self
            .ranges
            .range(..end)
            .filter(|(_, (e, _))| *e > first)
            .map(|(s, v)| (*s, *v))
            .collect();
        for (s, (e, m)) in overlapping {
            self.ranges.remove(&s);
            if s < first {
                self.ranges.insert(s, (first, m));
            }
            if e > end {
                self.ranges.insert(end, (e, m));
            }
        }
        if let Some(mode) = mode {
            self.ranges.insert(first, (end, mode));
        }
        self.merge_around(first, end);
    }

    /// Merges neighbours of equal mode touching `[first, end)`.
    fn merge_around(&mut self, first: u64, end: u64) {
        // Merge with the range ending at `first`.
        if let Some((&s, &(e, m))) = self.ranges.range(..first).next_back() {
            if e == first {
                if let Some(&(e2, m2)) = self.ranges.get(&first) {
                    if m2 == m {
                        self.ranges.remove(&first);
                        self.ranges.insert(s, (e2, m));
                    }
                }
            }
        }
        // Merge the range covering `end - 1` with the one starting at `end`.
        if let Some((&s, &(e, m))) = self.ranges.range(..end).next_back() {
            if e == end {
                if let Some(&(e2, m2)) = self.ranges.get(&end) {
                    if m2 == m {
                        self.ranges.remove(&end);
                        self.ranges.insert(s, (e2, m));
                    }
                }
            }
        }
    }

    /// Protects a page-aligned range.
    pub fn protect(&mut self, range: GpaRange, mode: Protection) -> Result<(), ProtectError> {
        if mode == Protection::NoExecute {
            return Err(ProtectError::NoExecute);
        }
        let (first, end) = self.check(range)?;
        self.set(first, end, Some(mode));
        Ok(())
    }

    /// Removes protection from a page-aligned range.
    pub fn unprotect(&mut self, range: GpaRange) -> Result<(), ProtectError> {
        let (first, end) = self.check(range)?;
        self.set(first, end, None);
        Ok(())
    }

    /// The protection of the page holding `gpa`.
    pub fn lookup(&self, gpa: u64) -> Option<Protection> {
        let page = gpa / PAGE_SIZE;
        self.ranges
            .range(..=page)
            .next_back()
            .filter(|(_, (e, _))| *e > page)
            .map(|(_, (_, m))| *m)
    }

    /// True if nothing is protected.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// All of RAM as maximal runs of equal protection, in address order.
    pub fn runs(&self) -> Vec<Run> {
        let mut out = Vec::with_capacity(self.ranges.len() * 2 + 1);
        let mut at = 0u64;
        let pages = self.ram_size / PAGE_SIZE;
        for (&s, &(e, m)) in &self.ranges {
            if s > at {
                out.push(Run {
                    base: at * PAGE_SIZE,
                    len: (s - at) * PAGE_SIZE,
                    mode: None,
                });
            }
            out.push(Run {
                base: s * PAGE_SIZE,
                len: (e - s) * PAGE_SIZE,
                mode: Some(m),
            });
            at = e;
        }
        if at < pages {
            out.push(Run {
                base: at * PAGE_SIZE,
                len: (pages - at) * PAGE_SIZE,
                mode: None,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const RAM: u64 = 64 * PAGE_SIZE;

    fn r(first: u64, pages: u64) -> GpaRange {
        GpaRange {
            base: first * PAGE_SIZE,
            len: pages * PAGE_SIZE,
        }
    }

    #[test]
    fn split_and_merge() {
        let mut m = ProtectionMap::new(RAM);
        m.protect(r(4, 4), Protection::WriteProtect).unwrap();
        m.protect(r(8, 2), Protection::WriteProtect).unwrap();
        assert_eq!(m.runs().len(), 3, "adjacent equal ranges merge");
        m.protect(r(5, 1), Protection::NoAccess).unwrap();
        let modes: Vec<_> = m.runs().iter().map(|r| r.mode).collect();
        assert_eq!(
            modes,
            [
                None,
                Some(Protection::WriteProtect),
                Some(Protection::NoAccess),
                Some(Protection::WriteProtect),
                None
            ]
        );
        m.unprotect(r(0, 64)).unwrap();
        assert_eq!(
            m.runs(),
            [Run {
                base: 0,
                len: RAM,
                mode: None
            }]
        );
        assert!(m.is_empty());
    }

    #[test]
    fn refuses_bad_ranges_and_execute_protection() {
        let mut m = ProtectionMap::new(RAM);
        assert!(matches!(
            m.protect(GpaRange { base: 1, len: 4096 }, Protection::WriteProtect),
            Err(ProtectError::Unaligned { .. })
        ));
        assert!(matches!(
            m.protect(r(63, 2), Protection::WriteProtect),
            Err(ProtectError::OutsideRam { .. })
        ));
        assert_eq!(
            m.protect(r(0, 1), Protection::NoExecute),
            Err(ProtectError::NoExecute)
        );
        assert!(m.unprotect(r(0, 0)).is_err());
    }

    proptest! {
        /// Thousands of random protect/unprotect operations agree with a
        /// page-by-page model, and the runs stay maximal (so the memslot
        /// count is bounded by the number of protected runs).
        #[test]
        fn matches_a_page_model(ops in proptest::collection::vec((0u64..64, 1u64..8, 0u8..3), 1..400)) {
            let mut m = ProtectionMap::new(RAM);
            let mut model = [None; 64];
            for (first, pages, op) in ops {
                let pages = pages.min(64 - first);
                let mode = match op {
                    0 => None,
                    1 => Some(Protection::WriteProtect),
                    _ => Some(Protection::NoAccess),
                };
                match mode {
                    Some(p) => m.protect(r(first, pages), p).unwrap(),
                    None => m.unprotect(r(first, pages)).unwrap(),
                }
                for page in &mut model[first as usize..(first + pages) as usize] {
                    *page = mode;
                }
            }
            for (page, want) in model.iter().enumerate() {
                prop_assert_eq!(m.lookup(page as u64 * PAGE_SIZE + 17), *want);
            }
            let runs = m.runs();
            prop_assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), RAM);
            for pair in runs.windows(2) {
                prop_assert_ne!(pair[0].mode, pair[1].mode, "runs are maximal");
                prop_assert_eq!(pair[0].base + pair[0].len, pair[1].base);
            }
        }
    }
}
