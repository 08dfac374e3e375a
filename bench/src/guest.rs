//! The benchmark guest (`examples/guests/bench.S`): its entry points,
//! ports, MSRs and addresses, and copies of its image with the loop count
//! patched in.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

// 0x8000, real mode, the image's default entry: prints `bench: up\n` on
// COM1 and halts (the start-up probe).
/// Protected mode: port, MSR and MMIO write loops between markers 1..4.
pub const ENTRY_DISPATCH: u64 = 0x8008;
/// Protected mode: WRMSR 0x174 and OUT 0x80 loops between markers 5..7.
pub const ENTRY_FILTER: u64 = 0x8010;
/// Protected mode: OUT to port 0x3ff forever, on every vCPU.
pub const ENTRY_SPIN: u64 = 0x8018;
/// Protected mode, one vCPU: one store into each of N pages from
/// [`DIRTY_BASE`], over and over (N is the loop count).
pub const ENTRY_DIRTY: u64 = 0x8020;
/// Protected mode, one vCPU: `\n` to COM1 forever.
pub const ENTRY_CHATTER: u64 = 0x8028;

/// The first page the dirty entry writes (1 MiB); it writes N pages up.
pub const DIRTY_BASE: u64 = 0x10_0000;

/// Port of the phase markers (byte OUT, phase number in AL).
pub const MARKER_PORT: u16 = 0x81;
/// The port-write target: the UART scratch register.
pub const SCRATCH_PORT: u16 = 0x3ff;
/// The port of the filtering phase (claimed by nobody by default).
pub const FILTER_PORT: u16 = 0x80;
/// An MSR KVM does not implement.
pub const VIRT_MSR: u32 = 0x5000_0000;
/// IA32_SYSENTER_CS, which KVM implements in the kernel.
pub const KVM_MSR: u32 = 0x174;
/// The MMIO region the guest stores into (at +0x10), above RAM.
pub const MMIO_BASE: u64 = 0xd000_0000;
pub const MMIO_LEN: u64 = 0x1000;

/// Where the loop count lives in the image, after the magic.
const MAGIC: &[u8; 8] = b"WVBENCH\0";
const MAGIC_OFFSET: usize = 0x30;
const COUNT_OFFSET: usize = 0x38;

/// `image` with the per-phase loop count set to `count`.
pub fn with_count(image: &[u8], count: u32) -> Result<Vec<u8>> {
    if count == 0 {
        bail!("the loop count must be at least 1");
    }
    if image.get(MAGIC_OFFSET..MAGIC_OFFSET + 8) != Some(&MAGIC[..]) {
        bail!("not the benchmark guest: no WVBENCH magic at offset {MAGIC_OFFSET:#x}");
    }
    let mut out = image.to_vec();
    out[COUNT_OFFSET..COUNT_OFFSET + 4].copy_from_slice(&count.to_le_bytes());
    Ok(out)
}

/// Writes a copy of `bench.bin` with `count` into `dir`; returns its path.
pub fn patched(bench_bin: &Path, dir: &Path, count: u32) -> Result<PathBuf> {
    let image = std::fs::read(bench_bin)
        .with_context(|| format!("cannot read {} (run `make build`)", bench_bin.display()))?;
    let out = dir.join(format!("bench-{count}.bin"));
    std::fs::write(&out, with_count(&image, count)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(out)
}

/// A 64 KiB firmware image for QEMU's `-bios`: 0xff everywhere but the
/// reset vector (offset 0xfff0, CS:IP = F000:FFF0), which far-jumps to
/// 0000:8000, where QEMU's generic loader put the benchmark guest. The
/// guest then starts in real mode at its first byte, as under wasmvisor.
pub fn qemu_reset_rom() -> Vec<u8> {
    let mut rom = vec![0xffu8; 0x10000];
    // ljmp 0x0000:0x8000
    rom[0xfff0..0xfff5].copy_from_slice(&[0xea, 0x00, 0x80, 0x00, 0x00]);
    rom
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_image() -> Vec<u8> {
        let mut img = vec![0u8; 0x60];
        img[MAGIC_OFFSET..MAGIC_OFFSET + 8].copy_from_slice(MAGIC);
        img
    }

    #[test]
    fn count_is_patched_little_endian() {
        let out = with_count(&fake_image(), 0x0102_0304).unwrap();
        assert_eq!(&out[COUNT_OFFSET..COUNT_OFFSET + 4], &[4, 3, 2, 1]);
        assert_eq!(out.len(), 0x60);
    }

    #[test]
    fn other_images_and_zero_counts_are_refused() {
        assert!(with_count(&[0u8; 0x60], 5).is_err());
        assert!(with_count(&[0u8; 4], 5).is_err());
        assert!(with_count(&fake_image(), 0).is_err());
    }

    #[test]
    fn reset_rom_jumps_to_the_load_address() {
        let rom = qemu_reset_rom();
        assert_eq!(rom.len(), 65536);
        assert_eq!(&rom[0xfff0..0xfff5], &[0xea, 0x00, 0x80, 0x00, 0x00]);
    }
}
