//! ECAM (the PCI Express enhanced configuration access mechanism): every
//! function's 4 KiB configuration space mapped in memory, addressed by
//! bus, device, function and register in the offset into the window.

use crate::bdf::Bdf;

/// The ECAM bytes of one bus: 32 devices x 8 functions x 4 KiB.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;
/// The most buses an ECAM window holds.
const MAX_BUSES: u64 = 256;

/// A decoded ECAM offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamAccess {
    /// The function addressed.
    pub bdf: Bdf,
    /// The byte offset in its configuration space, 0-4095.
    pub register: u16,
}

/// Decodes `offset` from the start of an ECAM window: bus in bits 27:20,
/// device in 19:15, function in 14:12, register in 11:0. `None` past the
/// 256 buses an ECAM window can hold.
pub fn decode(offset: u64) -> Option<EcamAccess> {
    if offset >= MAX_BUSES * ECAM_BUS_SIZE {
        return None;
    }
    Some(EcamAccess {
        // The routing ID is offset bits 27:12, so the cast keeps them all.
        bdf: Bdf::from_routing_id((offset >> 12) as u16),
        register: (offset & 0xfff) as u16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
        Bdf::new(bus, device, function).unwrap()
    }

    #[test]
    fn offsets_split_into_bus_device_function_and_register() {
        let cases = [
            (0x0, bdf(0, 0, 0), 0),
            (0x8000, bdf(0, 1, 0), 0),
            (0x1_0ffc, bdf(0, 2, 0), 0xffc),
            (0xf_f000 | 0x3c, bdf(0, 31, 7), 0x3c),
            (0x10_1000 | 0x100, bdf(1, 0, 1), 0x100),
            (0xfff_ffff, bdf(255, 31, 7), 0xfff),
        ];
        for (offset, bdf, register) in cases {
            assert_eq!(
                decode(offset),
                Some(EcamAccess { bdf, register }),
                "offset {offset:#x}"
            );
        }
        assert_eq!(decode(0x1000_0000), None);
    }
}
