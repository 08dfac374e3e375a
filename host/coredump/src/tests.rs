//! Round trips of whole core files: written by `write_core`, read back by
//! `CoreFile` and by binutils' `readelf`.

use std::io::{self, Cursor};
use std::process::Command;

use crate::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Guest memory whose every 8-byte word holds its own address, so any
/// misplaced byte shows.
fn pattern(gpa: u64, buf: &mut [u8]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        let addr = gpa + i as u64;
        *byte = (addr >> (8 * (addr % 8))) as u8;
    }
}

fn regs(cpu: u32) -> CpuRegisters {
    CpuRegisters {
        pid: cpu + 1,
        rip: 0xffff_ffff_8100_0000 + u64::from(cpu),
        rsp: 0xffff_ffff_8260_3f00,
        cs: 0x10,
        ss: 0x18,
        eflags: 0x2,
        gs_base: 0xffff_8880_7fc0_0000 + u64::from(cpu) * 0x10000,
        orig_rax: u64::MAX,
        ..CpuRegisters::default()
    }
}

/// Two RAM regions around a hole, as below and above 4 GiB (scaled down),
/// with the kernel text map and the direct map.
fn layout() -> CoreLayout {
    let mut info = VmcoreInfo::new();
    info.osrelease("6.1.0-test")
        .unwrap()
        .page_size(4096)
        .unwrap()
        .symbol("swapper_pg_dir", 0xffff_ffff_8260_a000)
        .unwrap();
    CoreLayout {
        cpus: vec![regs(0), regs(1)],
        vmcoreinfo: Some(info),
        ram: vec![
            // Given out of order: written by address.
            MemoryRegion {
                gpa: 4 * MIB,
                len: 2 * MIB + 123,
            },
            MemoryRegion {
                gpa: 0,
                len: 3 * MIB,
            },
        ],
        mappings: vec![
            // Kernel text: virtual 0xffffffff80000000 maps physical 0, over
            // 1 GiB: covers both regions whole.
            VirtualMapping {
                vaddr: 0xffff_ffff_8000_0000,
                gpa: 0,
                len: GIB,
            },
            // Direct map from physical 1 MiB: only part of the first region.
            VirtualMapping {
                vaddr: 0xffff_8880_0010_0000,
                gpa: MIB,
                len: GIB,
            },
        ],
    }
}

fn write(layout: &CoreLayout) -> (Vec<u8>, Vec<(u64, usize)>) {
    let mut reads = Vec::new();
    let mut out = Vec::new();
    let written = write_core(&mut out, layout, &mut |gpa, buf| {
        reads.push((gpa, buf.len()));
        pattern(gpa, buf);
        Ok(())
    })
    .unwrap();
    assert_eq!(written, out.len() as u64);
    assert_eq!(core_size(layout).unwrap(), written);
    (out, reads)
}

#[test]
fn the_elf_header_is_an_x86_64_core() {
    let (bytes, _) = write(&layout());
    assert_eq!(&bytes[..16], b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    assert_eq!(u16_at(16), 4, "ET_CORE");
    assert_eq!(u16_at(18), 62, "EM_X86_64");
    assert_eq!(
        u64::from_le_bytes(bytes[32..40].try_into().unwrap()),
        64,
        "e_phoff"
    );
    assert_eq!(u16_at(52), 64, "e_ehsize");
    assert_eq!(u16_at(54), 56, "e_phentsize");
    // PT_NOTE, one extra mapping header (direct map over part of region 0,
    // plus all of region 1, which the text map already named), two RAM.
    assert_eq!(u16_at(56), 1 + 2 + 2, "e_phnum");
    assert_eq!(u16_at(60), 0, "no sections");
}

#[test]
fn segments_and_notes_round_trip() {
    let layout = layout();
    let (bytes, _) = write(&layout);
    let core = CoreFile::parse(&mut Cursor::new(&bytes)).unwrap();

    assert_eq!(core.cpus(), layout.cpus);
    assert_eq!(
        core.vmcoreinfo(),
        Some(layout.vmcoreinfo.as_ref().unwrap().as_str())
    );
    let names: Vec<_> = core
        .notes
        .iter()
        .map(|note| (note.name.as_str(), note.kind))
        .collect();
    assert_eq!(names, [("CORE", 1), ("CORE", 1), ("VMCOREINFO", 0)]);

    let loads: Vec<_> = core
        .segments
        .iter()
        .map(|s| (s.vaddr, s.paddr, s.filesz, s.memsz))
        .collect();
    assert_eq!(
        loads,
        [
            // Direct map over region 0 from 1 MiB on.
            (0xffff_8880_0010_0000, MIB, 2 * MIB, 2 * MIB),
            // Direct map over region 1 (whole, but the text map named it).
            (0xffff_8880_0040_0000, 4 * MIB, 2 * MIB + 123, 2 * MIB + 123),
            // RAM, by address, at their kernel-text addresses.
            (0xffff_ffff_8000_0000, 0, 3 * MIB, 3 * MIB),
            (0xffff_ffff_8040_0000, 4 * MIB, 2 * MIB + 123, 2 * MIB + 123),
        ]
    );
    // The extra headers share the RAM headers' file bytes.
    let (ram0, ram1) = (&core.segments[2], &core.segments[3]);
    assert_eq!(core.segments[0].offset, ram0.offset + MIB);
    assert_eq!(core.segments[1].offset, ram1.offset);
    // RAM starts on page boundaries, and the file ends with the last byte.
    assert!(core.segments.iter().all(|s| s.flags == 7));
    assert_eq!(ram0.offset % 4096, 0);
    assert_eq!(ram1.offset % 4096, 0);
    assert_eq!(ram1.offset + ram1.filesz, bytes.len() as u64);
}

#[test]
fn memory_reads_back_by_physical_and_virtual_address() {
    let (bytes, _) = write(&layout());
    let mut file = Cursor::new(&bytes);
    let core = CoreFile::parse(&mut file).unwrap();
    let mut expected = vec![0u8; 5000];
    let mut got = vec![0u8; 5000];
    for paddr in [0, 0x1234, 3 * MIB - 5000, 4 * MIB, 6 * MIB + 123 - 5000] {
        pattern(paddr, &mut expected);
        core.read_physical(&mut file, paddr, &mut got).unwrap();
        assert_eq!(got, expected, "at {paddr:#x}");
    }
    // The same bytes through the kernel text map and the direct map.
    pattern(4 * MIB + 77, &mut expected);
    core.read_virtual(&mut file, 0xffff_ffff_8040_0000 + 77, &mut got)
        .unwrap();
    assert_eq!(got, expected);
    core.read_virtual(&mut file, 0xffff_8880_0040_0000 + 77, &mut got)
        .unwrap();
    assert_eq!(got, expected);
    pattern(2 * MIB, &mut expected);
    core.read_virtual(&mut file, 0xffff_8880_0020_0000, &mut got)
        .unwrap();
    assert_eq!(got, expected);

    // The hole between the regions is not in the core.
    assert!(matches!(
        core.read_physical(&mut file, 3 * MIB - 10, &mut got),
        Err(CoreError::NotInCore { addr }) if addr == 3 * MIB
    ));
    // Nor is the direct map below 1 MiB, which no mapping covers.
    assert!(core
        .read_virtual(&mut file, 0xffff_8880_0000_0000, &mut got)
        .is_err());
}

#[test]
fn ram_is_streamed_in_chunks_by_address() {
    let layout = CoreLayout {
        ram: vec![
            MemoryRegion {
                gpa: 16 * MIB,
                len: 1,
            },
            MemoryRegion {
                gpa: 0,
                len: 2 * CHUNK_SIZE as u64 + 4096,
            },
            MemoryRegion {
                gpa: 8 * MIB,
                len: 4096,
            },
        ],
        ..CoreLayout::default()
    };
    let (bytes, reads) = write(&layout);
    let chunk = CHUNK_SIZE as u64;
    assert_eq!(
        reads,
        [
            (0, CHUNK_SIZE),
            (chunk, CHUNK_SIZE),
            (2 * chunk, 4096),
            (8 * MIB, 4096),
            (16 * MIB, 1)
        ]
    );
    let core = CoreFile::parse(&mut Cursor::new(&bytes)).unwrap();
    // Without mappings, RAM headers say p_vaddr == p_paddr.
    assert!(core.segments.iter().all(|s| s.vaddr == s.paddr));
    assert!(core.cpus().is_empty());
    assert_eq!(core.vmcoreinfo(), None);
}

#[test]
fn read_and_write_failures_are_reported() {
    let layout = layout();
    let error = write_core(Vec::new(), &layout, &mut |gpa, _| {
        if gpa >= 4 * MIB {
            Err(io::Error::other("unmapped"))
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    assert!(
        matches!(error, CoreError::GuestMemory { gpa, .. } if gpa == 4 * MIB),
        "{error}"
    );
    assert!(error.to_string().contains("0x400000"), "{error}");

    let mut full = [0u8; 100];
    let error = write_core(&mut full[..], &layout, &mut |_, _| Ok(())).unwrap_err();
    assert!(matches!(error, CoreError::Write(_)), "{error}");
}

#[test]
fn invalid_layouts_are_rejected_before_writing() {
    let cases = [
        (vec![MemoryRegion { gpa: 0, len: 0 }], vec![]),
        (
            vec![MemoryRegion {
                gpa: u64::MAX,
                len: 2,
            }],
            vec![],
        ),
        (
            vec![
                MemoryRegion {
                    gpa: 0,
                    len: 2 * MIB,
                },
                MemoryRegion { gpa: MIB, len: MIB },
            ],
            vec![],
        ),
        (
            vec![MemoryRegion { gpa: 0, len: MIB }],
            vec![VirtualMapping {
                vaddr: 0xffff_8880_0000_0000,
                gpa: 2 * MIB,
                len: MIB,
            }],
        ),
        (
            vec![MemoryRegion { gpa: 0, len: MIB }],
            vec![VirtualMapping {
                vaddr: u64::MAX,
                gpa: 0,
                len: MIB,
            }],
        ),
    ];
    for (ram, mappings) in cases {
        let layout = CoreLayout {
            ram,
            mappings,
            ..CoreLayout::default()
        };
        let mut out = Vec::new();
        assert!(
            write_core(&mut out, &layout, &mut |_, _| Ok(())).is_err(),
            "{layout:?}"
        );
        assert!(out.is_empty());
    }
}

#[test]
fn garbage_is_not_a_core() {
    let (bytes, _) = write(&layout());
    for len in [0, 10, 63] {
        assert!(CoreFile::parse(&mut Cursor::new(&bytes[..len])).is_err());
    }
    // Headers intact, RAM cut off.
    assert!(CoreFile::parse(&mut Cursor::new(&bytes[..8192])).is_err());
    let mut not_core = bytes.clone();
    not_core[16] = 2; // ET_EXEC
    assert!(matches!(
        CoreFile::parse(&mut Cursor::new(&not_core)),
        Err(CoreError::NotCore(_))
    ));
    let mut bad_phnum = bytes;
    bad_phnum[56] = 0xfe;
    assert!(CoreFile::parse(&mut Cursor::new(&bad_phnum)).is_err());
}

/// binutils' own reading of the file: `readelf` must be installed (the
/// test fails rather than skips without it).
#[test]
fn readelf_accepts_the_core() {
    let (bytes, _) = write(&layout());
    let path = std::env::temp_dir().join(format!(
        "wasmvisor-coredump-test-{}.core",
        std::process::id()
    ));
    std::fs::write(&path, &bytes).unwrap();
    let output = Command::new("readelf")
        .args(["-W", "-h", "-n", "-l"])
        .arg(&path)
        .output();
    std::fs::remove_file(&path).unwrap();
    let output = output.unwrap_or_else(|error| {
        panic!("cannot run readelf ({error}): install binutils, this test checks the core with it")
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "readelf failed:\n{stdout}\n{stderr}"
    );
    assert!(stderr.trim().is_empty(), "readelf warned:\n{stderr}");
    assert!(stdout.contains("CORE (Core file)"), "{stdout}");
    assert!(stdout.contains("Advanced Micro Devices X86-64"), "{stdout}");
    assert_eq!(
        stdout.matches("NT_PRSTATUS (prstatus structure)").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("VMCOREINFO"), "{stdout}");
    // readelf shows the VMCOREINFO text in hex: "OSRELEASE=".
    assert!(stdout.contains("4f 53 52 45 4c 45 41 53 45 3d"), "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|line| line.trim_start().starts_with("LOAD"))
            .count(),
        4,
        "{stdout}"
    );
    assert!(
        stdout.contains("0xffffffff80400000 0x0000000000400000"),
        "{stdout}"
    );
}
