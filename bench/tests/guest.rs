//! The benchmark guest and its harness, on real KVM, with small counts.
//! These check counts and markers only: no test asserts on a timing.
//! Needs `make build` (target/assets, the release binaries); without
//! /dev/kvm the tests fail unless WASMVISOR_SKIP_KVM=1.

use std::path::{Path, PathBuf};

use wasmvisor_bench::dispatch::{run_guest, RunResult};
use wasmvisor_bench::{bars, guest, procs, snapshot};
use wasmvisor_tests::require_kvm;

const COUNT: u32 = 300;

fn assets() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ lives in the workspace root")
        .join("target/assets");
    assert!(
        p.join("guests/bench.bin").is_file(),
        "{} is missing: run `make build` first",
        p.join("guests/bench.bin").display()
    );
    p
}

/// A copy of bench.bin with COUNT patched in, private to one test.
fn image(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmvisor-bench-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    guest::patched(&assets().join("guests/bench.bin"), &dir, COUNT).unwrap()
}

fn policy(name: &str, config: &str) -> String {
    format!(
        "{}:{config}",
        assets().join(format!("policies/{name}.wasm")).display()
    )
}

fn exits(r: &RunResult, from: u8, to: u8) -> u64 {
    r.phase(from, to).unwrap().1
}

#[test]
fn every_dispatch_phase_makes_count_exits_natively_and_through_a_policy() {
    require_kvm!();
    let img = image("dispatch");
    let noop = policy("noop", "ports=0x3ff,msrs=0x50000000,mmio=0xd0000000+0x1000");
    for native in [true, false] {
        let r = run_guest(
            &img,
            guest::ENTRY_DISPATCH,
            std::slice::from_ref(&noop),
            native,
        )
        .unwrap();
        let phases: Vec<u8> = r.marks.iter().map(|m| m.phase).collect();
        assert_eq!(phases, [1, 2, 3, 4]);
        for (from, to) in [(1, 2), (2, 3), (3, 4)] {
            assert_eq!(exits(&r, from, to), u64::from(COUNT), "native {native}");
        }
        let calls = r.stats.policies[0].handled;
        // The native handler answers ahead of the policy, which then never runs.
        assert_eq!(calls, if native { 0 } else { 3 * u64::from(COUNT) });
        assert_eq!(r.stats.policies[0].faults, 0);
    }
    // Declared as constants, the same answers never enter Wasm.
    let constant = format!("{noop},constant=true");
    let r = run_guest(&img, guest::ENTRY_DISPATCH, &[constant], false).unwrap();
    for (from, to) in [(1, 2), (2, 3), (3, 4)] {
        assert_eq!(exits(&r, from, to), u64::from(COUNT), "constant");
    }
    let p = &r.stats.policies[0];
    assert_eq!(p.handled, 3 * u64::from(COUNT));
    assert_eq!(p.constant, p.handled, "every exit answered by a constant");
    assert!(p.time.is_zero(), "no call was made: {:?}", p.time);
    let _ = std::fs::remove_dir_all(img.parent().unwrap());
}

#[test]
fn an_unclaimed_kvm_msr_stays_in_the_kernel_and_ports_always_exit() {
    require_kvm!();
    let img = image("filter");
    let r = run_guest(&img, guest::ENTRY_FILTER, &[], false).unwrap();
    assert_eq!(exits(&r, 5, 6), 0, "WRMSR 0x174 without a subscription");
    assert_eq!(exits(&r, 6, 7), u64::from(COUNT), "OUT 0x80");
    let sub = policy("noop", "msrs=0x174,ports=0x80");
    let r = run_guest(&img, guest::ENTRY_FILTER, &[sub], false).unwrap();
    assert_eq!(exits(&r, 5, 6), u64::from(COUNT), "WRMSR 0x174, subscribed");
    assert_eq!(exits(&r, 6, 7), u64::from(COUNT), "OUT 0x80, subscribed");
    assert_eq!(r.stats.policies[0].handled, 2 * u64::from(COUNT));
    let _ = std::fs::remove_dir_all(img.parent().unwrap());
}

#[test]
fn bar_variants_map_all_of_bar_2_or_trap_every_access() {
    require_kvm!();
    let root = assets().parent().unwrap().to_path_buf();
    let testdev = root.join("release/wasmvisor-vfio-user-testdev");
    let dir = std::env::temp_dir().join(format!("wasmvisor-bench-bars-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = bars::Server::start(&testdev, &dir).unwrap();
    let wasmvisor = root.join("release/wasmvisor");
    let pci = assets().join("guests/pci.bin");
    let mapped = bars::run_once(&wasmvisor, &pci, &server.device(), &[]).unwrap();
    let (base, len) = bars::BAR2;
    let guard = policy("pci-guard", &format!("bar={base:#x}+{len:#x}"));
    let trapped = bars::run_once(&wasmvisor, &pci, &server.device(), &[guard]).unwrap();
    // Mapped, BAR 2 is all memslot; trapped, each of its 32768 accesses
    // exits on top of the same BAR 0 accesses.
    assert_eq!(mapped.mapped_bytes, len);
    assert_eq!(trapped.mapped_bytes, 0);
    assert_eq!(trapped.mmio_exits - mapped.mmio_exits, 32768);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_dirty_entry_writes_exactly_its_pages_between_resets() {
    require_kvm!();
    let root = assets().parent().unwrap().to_path_buf();
    let wasmvisor = root.join("release/wasmvisor");
    let dir = std::env::temp_dir().join(format!("wasmvisor-bench-reset-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bench = assets().join("guests/bench.bin");
    for pages in [0, 16] {
        let run = snapshot::resets(&wasmvisor, &bench, &dir, pages, 3).unwrap();
        assert_eq!(run.samples.len(), 3);
        for s in &run.samples {
            // Exactly the pages of one pass: nothing else is written.
            assert_eq!(s.pages, u64::from(pages), "{s:?}");
            assert!(s.copy_us <= s.total_us, "{s:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_restored_chatter_prints_a_newline_first() {
    require_kvm!();
    let root = assets().parent().unwrap().to_path_buf();
    let wasmvisor = root.join("release/wasmvisor");
    let dir = std::env::temp_dir().join(format!("wasmvisor-bench-chatter-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snap = dir.join("snap");
    let native = ["--serial".to_string(), "native".to_string()];
    snapshot::chatter_snapshot(
        &wasmvisor,
        &assets().join("guests/bench.bin"),
        &dir,
        &native,
        &snap,
    )
    .unwrap();
    let mut restore = std::process::Command::new(&wasmvisor);
    restore.arg("run").arg("--restore").arg(&snap);
    procs::first_byte_ms(&mut restore, b'\n', std::time::Duration::ZERO).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
