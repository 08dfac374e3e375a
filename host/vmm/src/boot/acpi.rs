//! The ACPI tables a Linux guest finds its CPUs and interrupt controllers
//! in: RSDP → XSDT → FADT (→ an empty DSDT) and MADT, built with rust-vmm's
//! `acpi_tables`.
//!
//! The platform is "hardware-reduced" ACPI (FADT flag `HW_REDUCED_ACPI`):
//! there are no fixed PM registers, GPEs or SCI to emulate, and Linux then
//! takes its timer from the local APIC instead of the PIT. The MADT lists
//! one enabled local APIC per vCPU (APIC ID = vCPU index, as the CPUID
//! table says) and KVM's in-kernel IOAPIC with GSIs 0-23. It has no
//! interrupt source overrides: KVM's default GSI routing sends ISA IRQ n to
//! IOAPIC pin n, which is the identity mapping Linux assumes without them.
//!
//! The tables live in 0xe0000-0xfffff, the BIOS area Linux scans for the
//! RSDP when booted through the zero page (and reserved in the e820 map).
//! The bzImage path also gets the RSDP in `boot_params.acpi_rsdp_addr`, the
//! PVH path in `hvm_start_info.rsdp_paddr`.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};
use wasmvisor_exit::GuestRam;

/// Where the RSDP goes: the first 16-byte boundary Linux's scan of the
/// BIOS area looks at.
pub const RSDP_ADDR: u64 = 0xe_0000;
/// The end of the area the tables may use.
pub const ACPI_END: u64 = 0x10_0000;
const LAPIC_ADDR: u32 = 0xfee0_0000;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const OEM_ID: [u8; 6] = *b"WASMVS";
const OEM_TABLE_ID: [u8; 8] = *b"WASMVSOR";
const OEM_REVISION: u32 = 1;

/// Serialises one table.
fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

/// The tables for `vcpus` vCPUs, each with the address it goes to, the
/// RSDP first.
pub fn tables(vcpus: u32) -> Vec<(u64, Vec<u8>)> {
    // Each table 16-byte aligned after the RSDP, in dependency order.
    let mut next = RSDP_ADDR + 0x40;
    let mut place = |len: usize| {
        let at = next;
        next = (next + len as u64 + 15) & !15;
        at
    };

    // An empty DSDT: there are no devices for AML to describe.
    let dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let dsdt_addr = place(dsdt.as_slice().len());

    let fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .finalize();
    let fadt = bytes(&fadt);
    let fadt_addr = place(fadt.len());

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for i in 0..vcpus {
        // vCPU counts are capped at 16 (wasmvisor_kvm::MAX_BOOT_VCPUS).
        let id = u8::try_from(i).unwrap_or(u8::MAX);
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    // The IOAPIC's ID follows the CPUs' APIC IDs, as on a PC.
    let ioapic_id = u8::try_from(vcpus).unwrap_or(u8::MAX);
    madt.add_structure(IoApic::new(ioapic_id, IOAPIC_ADDR, 0));
    let madt = bytes(&madt);
    let madt_addr = place(madt.len());

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes(&xsdt);
    let xsdt_addr = place(xsdt.len());

    let rsdp = bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    vec![
        (RSDP_ADDR, rsdp),
        (dsdt_addr, dsdt.as_slice().to_vec()),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (xsdt_addr, xsdt),
    ]
}

/// Writes the tables for `vcpus` vCPUs into guest RAM; returns the RSDP's
/// address.
pub fn write_tables(mem: &GuestRam, vcpus: u32) -> Result<u64, String> {
    for (addr, data) in tables(vcpus) {
        if addr + data.len() as u64 > ACPI_END {
            return Err(format!("the ACPI tables overflow {ACPI_END:#x}"));
        }
        mem.write_slice(&data, GuestAddress(addr))
            .map_err(|e| format!("cannot write the ACPI tables: {e}"))?;
    }
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(data: &[u8]) -> u8 {
        data.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn table<'a>(all: &'a [(u64, Vec<u8>)], sig: &[u8; 4]) -> (u64, &'a [u8]) {
        all.iter()
            .find(|(_, d)| &d[..4] == sig)
            .map(|(a, d)| (*a, d.as_slice()))
            .unwrap_or_else(|| panic!("no {}", String::from_utf8_lossy(sig)))
    }

    fn u32_at(d: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(d[off..off + 4].try_into().unwrap())
    }

    fn u64_at(d: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(d[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn the_rsdp_leads_to_every_table_and_every_checksum_holds() {
        let all = tables(2);
        let (addr, rsdp) = &all[0];
        assert_eq!(*addr, RSDP_ADDR);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(rsdp), 0, "extended checksum");
        assert_eq!(rsdp[15], 2, "revision 2: the XSDT is used");

        let (xsdt_addr, xsdt) = table(&all, b"XSDT");
        assert_eq!(u64_at(rsdp, 24), xsdt_addr);
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        let (fadt_addr, fadt) = table(&all, b"FACP");
        let (madt_addr, _) = table(&all, b"APIC");
        assert_eq!(entries, [fadt_addr, madt_addr]);

        let (dsdt_addr, _) = table(&all, b"DSDT");
        assert_eq!(u64_at(fadt, 140), dsdt_addr, "X_DSDT");
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");

        for (a, d) in &all[1..] {
            assert_eq!(u32_at(d, 4) as usize, d.len(), "length of {a:#x}");
            assert_eq!(
                sum(d),
                0,
                "checksum of {}",
                String::from_utf8_lossy(&d[..4])
            );
            assert!(a + d.len() as u64 <= ACPI_END);
        }
        // No two tables overlap.
        let mut spans: Vec<(u64, u64)> =
            all.iter().map(|(a, d)| (*a, *a + d.len() as u64)).collect();
        spans.sort_unstable();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
    }

    #[test]
    fn the_madt_lists_one_lapic_per_vcpu_and_the_ioapic() {
        let all = tables(3);
        let (_, madt) = table(&all, b"APIC");
        assert_eq!(u32_at(madt, 36), LAPIC_ADDR);
        let mut lapics = Vec::new();
        let mut ioapics = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            match kind {
                0 => lapics.push((madt[off + 2], madt[off + 3], u32_at(madt, off + 4))),
                1 => ioapics.push((madt[off + 2], u32_at(madt, off + 4), u32_at(madt, off + 8))),
                other => panic!("unexpected MADT entry type {other}"),
            }
            off += len;
        }
        assert_eq!(lapics, [(0, 0, 1), (1, 1, 1), (2, 2, 1)]);
        assert_eq!(ioapics, [(3, IOAPIC_ADDR, 0)]);
    }

    #[test]
    fn the_tables_land_in_guest_ram() {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        assert_eq!(write_tables(&mem, 16).unwrap(), RSDP_ADDR);
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(RSDP_ADDR)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }
}
