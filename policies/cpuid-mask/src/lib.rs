//! Rewrites the guest's CPUID table: the vendor string, the hypervisor
//! signature, and feature bits to hide.

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::{export_policy, Config, CpuidLeaf, Policy, Subscriptions};

/// The hypervisor leaf range base.
const HV_LEAF: u32 = 0x4000_0000;

/// Where a feature bit lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    /// CPUID.1:ECX
    Leaf1Ecx,
    /// CPUID.1:EDX
    Leaf1Edx,
    /// CPUID.(EAX=7,ECX=0):EBX
    Leaf7Ebx,
}

/// Feature names and their bits.
const FEATURES: &[(&str, Reg, u8)] = &[
    ("sse3", Reg::Leaf1Ecx, 0),
    ("pclmulqdq", Reg::Leaf1Ecx, 1),
    ("monitor", Reg::Leaf1Ecx, 3),
    ("vmx", Reg::Leaf1Ecx, 5),
    ("ssse3", Reg::Leaf1Ecx, 9),
    ("fma", Reg::Leaf1Ecx, 12),
    ("cx16", Reg::Leaf1Ecx, 13),
    ("sse4_1", Reg::Leaf1Ecx, 19),
    ("sse4_2", Reg::Leaf1Ecx, 20),
    ("x2apic", Reg::Leaf1Ecx, 21),
    ("movbe", Reg::Leaf1Ecx, 22),
    ("popcnt", Reg::Leaf1Ecx, 23),
    ("aes", Reg::Leaf1Ecx, 25),
    ("xsave", Reg::Leaf1Ecx, 26),
    ("osxsave", Reg::Leaf1Ecx, 27),
    ("avx", Reg::Leaf1Ecx, 28),
    ("f16c", Reg::Leaf1Ecx, 29),
    ("rdrand", Reg::Leaf1Ecx, 30),
    ("hypervisor", Reg::Leaf1Ecx, 31),
    ("fpu", Reg::Leaf1Edx, 0),
    ("vme", Reg::Leaf1Edx, 1),
    ("de", Reg::Leaf1Edx, 2),
    ("pse", Reg::Leaf1Edx, 3),
    ("tsc", Reg::Leaf1Edx, 4),
    ("msr", Reg::Leaf1Edx, 5),
    ("pae", Reg::Leaf1Edx, 6),
    ("mce", Reg::Leaf1Edx, 7),
    ("cx8", Reg::Leaf1Edx, 8),
    ("apic", Reg::Leaf1Edx, 9),
    ("sep", Reg::Leaf1Edx, 11),
    ("mtrr", Reg::Leaf1Edx, 12),
    ("pge", Reg::Leaf1Edx, 13),
    ("mca", Reg::Leaf1Edx, 14),
    ("cmov", Reg::Leaf1Edx, 15),
    ("pat", Reg::Leaf1Edx, 16),
    ("pse36", Reg::Leaf1Edx, 17),
    ("clflush", Reg::Leaf1Edx, 19),
    ("mmx", Reg::Leaf1Edx, 23),
    ("fxsr", Reg::Leaf1Edx, 24),
    ("sse", Reg::Leaf1Edx, 25),
    ("sse2", Reg::Leaf1Edx, 26),
    ("ht", Reg::Leaf1Edx, 28),
    ("fsgsbase", Reg::Leaf7Ebx, 0),
    ("bmi1", Reg::Leaf7Ebx, 3),
    ("hle", Reg::Leaf7Ebx, 4),
    ("avx2", Reg::Leaf7Ebx, 5),
    ("smep", Reg::Leaf7Ebx, 7),
    ("bmi2", Reg::Leaf7Ebx, 8),
    ("erms", Reg::Leaf7Ebx, 9),
    ("invpcid", Reg::Leaf7Ebx, 10),
    ("rtm", Reg::Leaf7Ebx, 11),
    ("avx512f", Reg::Leaf7Ebx, 16),
    ("rdseed", Reg::Leaf7Ebx, 18),
    ("adx", Reg::Leaf7Ebx, 19),
    ("smap", Reg::Leaf7Ebx, 20),
    ("clflushopt", Reg::Leaf7Ebx, 23),
    ("sha", Reg::Leaf7Ebx, 29),
];

/// A 12-byte signature as the three registers that carry it, in order.
fn words(sig: &[u8; 12]) -> [u32; 3] {
    let w = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
    [w(0), w(4), w(8)]
}

#[derive(Debug, Default)]
struct CpuidMask {
    vendor: Option<[u8; 12]>,
    hypervisor: Option<[u8; 12]>,
    hide_1_ecx: u32,
    hide_1_edx: u32,
    hide_7_ebx: u32,
}

impl CpuidMask {
    fn from_config(config: &Config) -> Result<Self, String> {
        config.check_keys(&["vendor", "hypervisor", "hide"])?;
        let mut mask = CpuidMask::default();
        if let Some(v) = config.get("vendor") {
            let bytes: [u8; 12] = v
                .as_bytes()
                .try_into()
                .map_err(|_| format!("config key `vendor`: `{v}` is {} bytes, not 12", v.len()))?;
            mask.vendor = Some(bytes);
        }
        if let Some(h) = config.get("hypervisor") {
            if h.len() > 12 {
                return Err(format!(
                    "config key `hypervisor`: `{h}` is longer than 12 bytes"
                ));
            }
            let mut sig = [0u8; 12];
            sig[..h.len()].copy_from_slice(h.as_bytes());
            mask.hypervisor = Some(sig);
        }
        for name in config.all("hide").flat_map(|v| v.split(',')) {
            let name = name.trim();
            let &(_, reg, bit) = FEATURES
                .iter()
                .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
                .ok_or_else(|| format!("config key `hide`: unknown CPU feature `{name}`"))?;
            let bits = match reg {
                Reg::Leaf1Ecx => &mut mask.hide_1_ecx,
                Reg::Leaf1Edx => &mut mask.hide_1_edx,
                Reg::Leaf7Ebx => &mut mask.hide_7_ebx,
            };
            *bits |= 1 << bit;
        }
        Ok(mask)
    }

    fn subscriptions(&self) -> Subscriptions {
        let mut s = Subscriptions::new();
        if self.vendor.is_some() {
            s = s.cpuid(0);
        }
        if self.hide_1_ecx | self.hide_1_edx != 0 {
            s = s.cpuid(1);
        }
        if self.hide_7_ebx != 0 {
            s = s.cpuid(7);
        }
        if self.hypervisor.is_some() {
            s = s.cpuid(HV_LEAF);
        }
        s
    }

    fn apply(&self, mut leaf: CpuidLeaf) -> CpuidLeaf {
        match leaf.function {
            0 => {
                if let Some(v) = &self.vendor {
                    [leaf.ebx, leaf.edx, leaf.ecx] = words(v);
                }
            }
            1 => {
                leaf.ecx &= !self.hide_1_ecx;
                leaf.edx &= !self.hide_1_edx;
            }
            7 if leaf.index == 0 => leaf.ebx &= !self.hide_7_ebx,
            HV_LEAF => {
                if let Some(h) = &self.hypervisor {
                    leaf.eax = leaf.eax.max(HV_LEAF + 1);
                    [leaf.ebx, leaf.ecx, leaf.edx] = words(h);
                }
            }
            _ => {}
        }
        leaf
    }
}

impl Policy for CpuidMask {
    const NAME: &'static str = "cpuid-mask";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "rewrites CPUID: vendor, hypervisor signature, hidden features";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        let mask = CpuidMask::from_config(config)?;
        let subscriptions = mask.subscriptions();
        Ok((mask, subscriptions))
    }

    fn cpuid(&mut self, leaf: CpuidLeaf) -> CpuidLeaf {
        self.apply(leaf)
    }
}

export_policy!(CpuidMask);

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(pairs: &[(&str, &str)]) -> Result<CpuidMask, String> {
        CpuidMask::from_config(&pairs.iter().copied().collect())
    }

    fn leaf(function: u32, index: u32) -> CpuidLeaf {
        CpuidLeaf {
            function,
            index,
            eax: 0x11,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
        }
    }

    #[test]
    fn vendor() {
        let m = mask(&[("vendor", "GenuineIntel")]).unwrap();
        let l = m.apply(leaf(0, 0));
        assert_eq!(
            (l.eax, l.ebx, l.edx, l.ecx),
            (0x11, 0x756e_6547, 0x4965_6e69, 0x6c65_746e)
        );
        assert_eq!(m.subscriptions().cpuid, [0]);
        assert!(mask(&[("vendor", "short")]).unwrap_err().contains("not 12"));
    }

    #[test]
    fn hypervisor() {
        let m = mask(&[("hypervisor", "wasmvisor")]).unwrap();
        let l = m.apply(leaf(HV_LEAF, 0));
        assert_eq!(l.eax, 0x4000_0001);
        let mut sig = Vec::new();
        for w in [l.ebx, l.ecx, l.edx] {
            sig.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(sig, b"wasmvisor\0\0\0");
        let mut big = leaf(HV_LEAF, 0);
        big.eax = 0x4000_0010;
        assert_eq!(m.apply(big).eax, 0x4000_0010);
        assert_eq!(m.subscriptions().cpuid, [HV_LEAF]);
        assert!(mask(&[("hypervisor", "thirteen-char")]).is_err());
    }

    #[test]
    fn hide() {
        let m = mask(&[
            ("hide", "vmx"),
            ("hide", "hypervisor,sse2"),
            ("hide", "AVX2"),
        ])
        .unwrap();
        let l = m.apply(leaf(1, 0));
        assert_eq!(l.ecx, !((1 << 5) | (1 << 31)));
        assert_eq!(l.edx, !(1 << 26));
        assert_eq!(l.ebx, u32::MAX);
        assert_eq!(m.apply(leaf(7, 0)).ebx, !(1 << 5));
        assert_eq!(m.apply(leaf(7, 1)).ebx, u32::MAX);
        assert_eq!(m.apply(leaf(2, 0)).ecx, u32::MAX);
        assert_eq!(m.subscriptions().cpuid, [1, 7]);
        assert_eq!(
            mask(&[("hide", "warp-drive")]).unwrap_err(),
            "config key `hide`: unknown CPU feature `warp-drive`"
        );
    }

    #[test]
    fn table_is_consistent() {
        for (i, (name, reg, bit)) in FEATURES.iter().enumerate() {
            assert!(*bit < 32);
            for (other, reg2, bit2) in &FEATURES[i + 1..] {
                assert_ne!(name, other);
                assert!(reg != reg2 || bit != bit2, "{name} and {other}");
            }
        }
        assert_eq!(FEATURES.len(), 19 + 23 + 15);
    }

    #[test]
    fn empty_and_unknown() {
        let m = mask(&[]).unwrap();
        assert!(m.subscriptions().cpuid.is_empty());
        assert_eq!(m.apply(leaf(1, 0)), leaf(1, 0));
        assert_eq!(
            mask(&[("vendr", "x")]).unwrap_err(),
            "unknown config key `vendr`"
        );
    }
}
