//! The vmlinux inside a bzImage, so that `--kernel vmlinuz` gets a profile
//! as `--kernel vmlinux` does. The boot protocol's setup header says where
//! the compressed payload is (`payload_offset`, `payload_length`, relative
//! to the protected-mode code after the setup sectors); the payload is the
//! ELF vmlinux, compressed with one of the kernel's configured methods.
//! Two are read here: LZ4 (Debian's; the kernel's legacy LZ4 frame, a
//! magic then length-prefixed blocks of at most 8 MiB each) and gzip.
//! Others (xz, zstd, bzip2, lzma, lzo) get an error naming the method.

use std::io::Read;

use crate::ProfileError;

/// The kernel's legacy LZ4 frame magic (`lib/decompress_unlz4.c`).
const LZ4_LEGACY: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// The largest block in a legacy LZ4 frame.
const LZ4_BLOCK_MAX: usize = 8 << 20;
/// The largest vmlinux accepted, so a corrupt payload cannot exhaust memory.
const VMLINUX_MAX: usize = 1 << 30;

/// Whether `image` starts like a bzImage: the "HdrS" setup header magic.
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(0x202..0x206) == Some(b"HdrS")
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The compressed payload of a bzImage.
fn payload(image: &[u8]) -> Result<&[u8], ProfileError> {
    let bad = |why: &str| ProfileError::BzImage(why.to_string());
    let setup_sects = match image.get(0x1f1) {
        Some(0) => 4,
        Some(&n) => usize::from(n),
        None => return Err(bad("the setup header is cut short")),
    };
    let offset = le32(image, 0x248).ok_or_else(|| bad("the setup header is cut short"))?;
    let length = le32(image, 0x24c).ok_or_else(|| bad("the setup header is cut short"))?;
    let start = (setup_sects + 1) * 512 + offset as usize;
    image
        .get(start..start.saturating_add(length as usize))
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("the payload lies outside the file"))
}

fn lz4_legacy(mut data: &[u8]) -> Result<Vec<u8>, ProfileError> {
    let bad = |why: String| ProfileError::BzImage(format!("LZ4: {why}"));
    data = &data[4..];
    let mut out = Vec::new();
    // Blocks until the data ends, or until a word that is not a plausible
    // block size (the kernel appends the uncompressed size after the last
    // block).
    while data.len() >= 4 {
        let n = le32(data, 0).unwrap_or(0) as usize;
        if n == 0 || n > data.len() - 4 || n == u32::from_le_bytes(LZ4_LEGACY) as usize {
            break;
        }
        let block = lz4_flex::block::decompress(&data[4..4 + n], LZ4_BLOCK_MAX)
            .map_err(|e| bad(e.to_string()))?;
        out.extend_from_slice(&block);
        if out.len() > VMLINUX_MAX {
            return Err(bad("the unpacked image is larger than 1 GiB".into()));
        }
        data = &data[4 + n..];
    }
    if out.is_empty() {
        return Err(bad("no block could be read".into()));
    }
    Ok(out)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, ProfileError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(VMLINUX_MAX as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ProfileError::BzImage(format!("gzip: {e}")))?;
    if out.len() > VMLINUX_MAX {
        return Err(ProfileError::BzImage(
            "the unpacked image is larger than 1 GiB".into(),
        ));
    }
    Ok(out)
}

/// The uncompressed vmlinux of a bzImage.
pub fn vmlinux(image: &[u8]) -> Result<Vec<u8>, ProfileError> {
    let payload = payload(image)?;
    let method = |m: &str| {
        ProfileError::BzImage(format!(
            "it is compressed with {m}, which wasmvisor does not unpack"
        ))
    };
    match payload {
        [0x02, 0x21, 0x4c, 0x18, ..] => lz4_legacy(payload),
        [0x1f, 0x8b, ..] => gzip(payload),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Err(method("xz")),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Err(method("zstd")),
        [b'B', b'Z', b'h', ..] => Err(method("bzip2")),
        [0x5d, 0, 0, ..] => Err(method("lzma")),
        [0x89, b'L', b'Z', b'O', ..] => Err(method("lzo")),
        _ => Err(ProfileError::BzImage(
            "the payload's compression is not recognised".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage-shaped file: setup sectors, then `payload` where the
    /// header says.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512];
        img[0x1f1] = 4;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(&[0; 16]);
        img.extend_from_slice(payload);
        img
    }

    #[test]
    fn lz4_legacy_and_gzip_payloads_unpack() {
        let elf: Vec<u8> = b"\x7fELF"
            .iter()
            .copied()
            .chain((0..5000u32).map(|i| (i % 7) as u8))
            .collect();
        let mut lz = LZ4_LEGACY.to_vec();
        let block = lz4_flex::block::compress(&elf);
        lz.extend_from_slice(&(block.len() as u32).to_le_bytes());
        lz.extend_from_slice(&block);
        lz.extend_from_slice(&(elf.len() as u32).to_le_bytes()); // the size trailer
        let img = bzimage(&lz);
        assert!(is_bzimage(&img));
        assert_eq!(vmlinux(&img).unwrap(), elf);

        let mut gz = Vec::new();
        let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &elf).unwrap();
        enc.finish().unwrap();
        assert_eq!(vmlinux(&bzimage(&gz)).unwrap(), elf);
    }

    #[test]
    fn other_methods_and_damage_are_named() {
        let e = vmlinux(&bzimage(&[0x28, 0xb5, 0x2f, 0xfd, 1, 2]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("zstd"), "{e}");
        let e = vmlinux(&bzimage(b"garbage!")).unwrap_err().to_string();
        assert!(e.contains("not recognised"), "{e}");
        let mut lz = LZ4_LEGACY.to_vec();
        lz.extend_from_slice(&8u32.to_le_bytes());
        lz.extend_from_slice(&[0xff; 8]);
        assert!(vmlinux(&bzimage(&lz)).is_err());
        let img = bzimage(b"x");
        for n in 0..img.len() {
            let _ = vmlinux(&img[..n]);
        }
        assert!(!is_bzimage(b"\x7fELF"));
    }
}
