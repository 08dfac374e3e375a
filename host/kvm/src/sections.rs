//! The section container of the vCPU and VM state files: named byte
//! blobs, each a KVM structure in its x86-64 UAPI layout
//! (`docs/snapshots.md`). Reading checks every length, so a damaged or
//! truncated file is an error, never a short structure.

use std::collections::BTreeMap;

use kvm_bindings::kvm_fpu;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// The first eight bytes of a section file.
pub const MAGIC: &[u8; 8] = b"WVSTATE1";

/// Why a state file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SectionsError {
    #[error("not a wasmvisor state file (bad magic)")]
    Magic,
    #[error("state file is truncated")]
    Truncated,
    #[error("state file has a malformed section name")]
    Name,
    #[error("state file has section `{0}` twice")]
    Duplicate(String),
    #[error("state file lacks section `{0}`")]
    Missing(String),
    #[error("section `{section}` is {got} bytes, expected {want}")]
    Size {
        section: String,
        want: usize,
        got: usize,
    },
}

/// Named sections, in name order.
#[derive(Debug, Default)]
pub struct Sections {
    map: BTreeMap<String, Vec<u8>>,
}

/// The bytes of a plain KVM structure.
pub fn pod<T: IntoBytes + Immutable>(value: &T) -> &[u8] {
    value.as_bytes()
}

/// A plain KVM structure from exactly its size in bytes.
pub fn from_pod<T: FromBytes>(section: &str, bytes: &[u8]) -> Result<T, SectionsError> {
    T::read_from_bytes(bytes).map_err(|_| SectionsError::Size {
        section: section.into(),
        want: std::mem::size_of::<T>(),
        got: bytes.len(),
    })
}

impl Sections {
    pub fn new() -> Sections {
        Sections::default()
    }

    pub fn put(&mut self, name: &str, bytes: &[u8]) {
        self.map.insert(name.to_string(), bytes.to_vec());
    }

    /// Magic, section count (u32), then per section: name length (u8),
    /// name (ASCII), length (u64), bytes. Little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(self.map.len() as u32).to_le_bytes());
        for (name, bytes) in &self.map {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Sections, SectionsError> {
        let mut at = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(SectionsError::Magic)?;
        let mut take = |n: usize| -> Result<&[u8], SectionsError> {
            if at.len() < n {
                return Err(SectionsError::Truncated);
            }
            let (head, rest) = at.split_at(n);
            at = rest;
            Ok(head)
        };
        let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        let mut map = BTreeMap::new();
        for _ in 0..count {
            let len = take(1)?[0] as usize;
            let name = std::str::from_utf8(take(len)?)
                .ok()
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or(SectionsError::Name)?
                .to_string();
            let size = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
            let size = usize::try_from(size).map_err(|_| SectionsError::Truncated)?;
            let data = take(size)?.to_vec();
            if map.insert(name.clone(), data).is_some() {
                return Err(SectionsError::Duplicate(name));
            }
        }
        if !at.is_empty() {
            return Err(SectionsError::Size {
                section: "(end of file)".into(),
                want: 0,
                got: at.len(),
            });
        }
        Ok(Sections { map })
    }

    pub fn get(&self, name: &str) -> Result<&[u8], SectionsError> {
        self.get_opt(name)
            .ok_or_else(|| SectionsError::Missing(name.into()))
    }

    pub fn get_opt(&self, name: &str) -> Option<&[u8]> {
        self.map.get(name).map(Vec::as_slice)
    }

    /// A plain structure from section `name`.
    pub fn pod<T: FromBytes>(&self, name: &str) -> Result<T, SectionsError> {
        from_pod(name, self.get(name)?)
    }
}

/// `kvm_fpu` has no byte-layout derive in kvm-bindings: its fields, in
/// UAPI order, written out by hand (416 bytes).
pub fn fpu_to_bytes(f: &kvm_fpu) -> Vec<u8> {
    let mut out = Vec::with_capacity(FPU_BYTES);
    for r in &f.fpr {
        out.extend_from_slice(r);
    }
    out.extend_from_slice(&f.fcw.to_le_bytes());
    out.extend_from_slice(&f.fsw.to_le_bytes());
    out.push(f.ftwx);
    out.push(f.pad1);
    out.extend_from_slice(&f.last_opcode.to_le_bytes());
    out.extend_from_slice(&f.last_ip.to_le_bytes());
    out.extend_from_slice(&f.last_dp.to_le_bytes());
    for x in &f.xmm {
        out.extend_from_slice(x);
    }
    out.extend_from_slice(&f.mxcsr.to_le_bytes());
    out.extend_from_slice(&f.pad2.to_le_bytes());
    out
}

const FPU_BYTES: usize = 8 * 16 + 2 + 2 + 1 + 1 + 2 + 8 + 8 + 16 * 16 + 4 + 4;

pub fn fpu_from_bytes(b: &[u8]) -> Result<kvm_fpu, SectionsError> {
    if b.len() != FPU_BYTES {
        return Err(SectionsError::Size {
            section: "fpu".into(),
            want: FPU_BYTES,
            got: b.len(),
        });
    }
    let mut at = 0;
    let mut next = |n: usize| {
        let s = &b[at..at + n];
        at += n;
        s
    };
    let mut f = kvm_fpu::default();
    for r in f.fpr.iter_mut() {
        r.copy_from_slice(next(16));
    }
    f.fcw = u16::from_le_bytes(next(2).try_into().expect("2"));
    f.fsw = u16::from_le_bytes(next(2).try_into().expect("2"));
    f.ftwx = next(1)[0];
    f.pad1 = next(1)[0];
    f.last_opcode = u16::from_le_bytes(next(2).try_into().expect("2"));
    f.last_ip = u64::from_le_bytes(next(8).try_into().expect("8"));
    f.last_dp = u64::from_le_bytes(next(8).try_into().expect("8"));
    for x in f.xmm.iter_mut() {
        x.copy_from_slice(next(16));
    }
    f.mxcsr = u32::from_le_bytes(next(4).try_into().expect("4"));
    f.pad2 = u32::from_le_bytes(next(4).try_into().expect("4"));
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_round_trip_and_refuse_damage() {
        let mut s = Sections::new();
        s.put("a", &[1, 2, 3]);
        s.put("bb", &[]);
        let bytes = s.encode();
        let back = Sections::decode(&bytes).unwrap();
        assert_eq!(back.get("a").unwrap(), &[1, 2, 3]);
        assert_eq!(back.get("bb").unwrap(), &[] as &[u8]);
        assert_eq!(
            back.get("c").unwrap_err(),
            SectionsError::Missing("c".into())
        );
        for cut in 0..bytes.len() {
            assert!(Sections::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(Sections::decode(&bad).unwrap_err(), SectionsError::Magic);
        let mut longer = bytes;
        longer.push(0);
        assert!(Sections::decode(&longer).is_err());
    }

    #[test]
    fn fpu_round_trips() {
        let mut f = kvm_fpu {
            fcw: 0x37f,
            ftwx: 0xaa,
            last_ip: 0x1234_5678_9abc,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        f.fpr[7][15] = 9;
        f.xmm[15][0] = 7;
        let b = fpu_to_bytes(&f);
        assert_eq!(b.len(), FPU_BYTES);
        assert_eq!(fpu_from_bytes(&b).unwrap(), f);
        assert!(fpu_from_bytes(&b[1..]).is_err());
    }

    #[test]
    fn pod_sizes_are_checked() {
        let regs = kvm_bindings::kvm_regs {
            rip: 0x1000,
            ..Default::default()
        };
        let b = pod(&regs);
        let back: kvm_bindings::kvm_regs = from_pod("regs", b).unwrap();
        assert_eq!(back.rip, 0x1000);
        assert!(from_pod::<kvm_bindings::kvm_regs>("regs", &b[1..]).is_err());
    }
}
