//! Segment registers: KVM's unpacked `kvm_segment` and the packed
//! attribute word of [`Segment`].

use kvm_bindings::{kvm_segment, kvm_sregs};
use wasmvisor_exit::{Segment, SegmentReg};

pub(super) fn segment_slot(s: &mut kvm_sregs, r: SegmentReg) -> &mut kvm_segment {
    match r {
        SegmentReg::Cs => &mut s.cs,
        SegmentReg::Ds => &mut s.ds,
        SegmentReg::Es => &mut s.es,
        SegmentReg::Fs => &mut s.fs,
        SegmentReg::Gs => &mut s.gs,
        SegmentReg::Ss => &mut s.ss,
        SegmentReg::Tr => &mut s.tr,
        SegmentReg::Ldtr => &mut s.ldt,
    }
}

/// KVM's unpacked segment as the WIT's packed attribute word.
pub(super) fn segment_from_kvm(k: &kvm_segment) -> Segment {
    let attributes = u16::from(k.type_ & 0xf)
        | u16::from(k.s & 1) << 4
        | u16::from(k.dpl & 3) << 5
        | u16::from(k.present & 1) << 7
        | u16::from(k.avl & 1) << 12
        | u16::from(k.l & 1) << 13
        | u16::from(k.db & 1) << 14
        | u16::from(k.g & 1) << 15;
    Segment {
        selector: k.selector,
        base: k.base,
        limit: k.limit,
        attributes,
        unusable: k.unusable != 0,
    }
}

pub(super) fn segment_to_kvm(s: &Segment) -> kvm_segment {
    let bit = |n: u16| ((s.attributes >> n) & 1) as u8;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (s.attributes & 0xf) as u8,
        s: bit(4),
        dpl: ((s.attributes >> 5) & 3) as u8,
        present: bit(7),
        avl: bit(12),
        l: bit(13),
        db: bit(14),
        g: bit(15),
        unusable: u8::from(s.unusable),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_through_the_packed_form() {
        let k = kvm_segment {
            base: 0x1000,
            limit: 0xffff_ffff,
            selector: 0x18,
            type_: 0xb,
            present: 1,
            dpl: 3,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 1,
            unusable: 0,
            padding: 0,
        };
        let s = segment_from_kvm(&k);
        assert_eq!(
            s.attributes,
            0xb | 1 << 4 | 3 << 5 | 1 << 7 | 1 << 12 | 1 << 13 | 1 << 15
        );
        assert_eq!(segment_to_kvm(&s), k);
    }
}
