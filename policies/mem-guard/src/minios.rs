//! minios as the guard sees it (examples/guests/README.md): its page
//! tables in 2 MiB of RAM, its control registers and its higher-half
//! kernel mapping, on the SDK's fake host.

use wasmvisor_policy_sdk::testing::FakeHost;
use wasmvisor_policy_sdk::Reg;

/// Where the kernel's higher half starts.
pub const KBASE: u64 = 0xffff_ffff_8000_0000;
/// The guest's RAM, from GPA 0.
pub const RAM: u64 = 0x20_0000;

/// The PML4 (at CR3), PDPTs and PDs, as (GPA, entry).
const TABLES: [(u64, u64); 7] = [
    (0x104000, 0x108023),
    (0x104000 + 511 * 8, 0x105023),
    (0x105000 + 510 * 8, 0x106023),
    (0x106000, 0x107023),
    (0x108000, 0x109023),
    (0x109000, 0x10a023),
    (0x10a000 + 0x100 * 8, 0x100063),
];

/// Writes a 64-bit entry at `gpa`.
pub fn set64(host: &FakeHost, gpa: u64, value: u64) {
    host.map_phys(gpa, &value.to_le_bytes());
}

/// Writes a 32-bit entry at `gpa`.
pub fn set32(host: &FakeHost, gpa: u64, value: u32) {
    host.map_phys(gpa, &value.to_le_bytes());
}

/// A fake host holding minios in 4-level paging, its kernel (GPA
/// 0x100000-0x10cfff) mapped at `KBASE + GPA`.
pub fn host() -> FakeHost {
    let host = FakeHost::new();
    host.map_ram(0, RAM)
        .set_reg(Reg::Cr3, 0x104000)
        .set_reg(Reg::Cr0, 0x8000_0011)
        .set_reg(Reg::Cr4, 0x20)
        .set_reg(Reg::Efer, 0xd01)
        .map_virt(KBASE + 0x100000, 0x100000, 0xd000);
    for (gpa, entry) in TABLES {
        set64(&host, gpa, entry);
    }
    // The PT mapping the kernel's pages 0x100-0x10c.
    for i in 0x100..=0x10c_u64 {
        set64(&host, 0x107000 + i * 8, (i << 12) | 0x63);
    }
    host
}
