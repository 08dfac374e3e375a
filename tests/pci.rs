//! The PCI segment (`--device test`): the `pci` guest enumerates bus 0
//! through config mechanism #1, sizes the test device's BAR, takes its MSI
//! through the in-kernel LAPIC and checks its DMA; the pci-guard policy
//! vetoes a config write and a DMA address outside its window. Without
//! VFIO, `--device vfio=...` is one error line naming what is missing.

use wasmvisor_tests::*;

fn run_pci_guest(extra: &[&str]) -> Run {
    let mut args = vec!["--device", "test"];
    args.extend(extra);
    run_protected_guest("pci.bin", &args)
}

/// What the device's DMA SUM of its own FILL pattern must be: the sum of
/// `0xa5 ^ i` over the 64 bytes (`wasmvisor_pci::dma_pattern`).
fn expected_sum() -> u32 {
    (0..64u32).map(|i| 0xa5 ^ i).sum()
}

#[test]
fn the_guest_enumerates_sizes_and_drives_the_test_device() {
    if !kvm_available() {
        return;
    }
    let r = run_pci_guest(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    for line in [
        "pci: 00:00.0 5741:0001 class 06000000".to_string(),
        "pci: 00:01.0 5741:0002 class ff000001".to_string(),
        "pci: bar0 e8000000 size 00001000".to_string(),
        "pci: id WVTD".to_string(),
        "pci: msi vector 0x40 delivered 01".to_string(),
        "pci: dma fill status 01, every byte ok".to_string(),
        format!("pci: dma sum {:08x}", expected_sum()),
        "pci: command after the second write 0002".to_string(),
        "pci: done".to_string(),
    ] {
        assert!(
            r.stdout.lines().any(|l| l == line),
            "missing `{line}`:\n{}",
            r.stdout
        );
    }
    // Exactly two functions on the bus.
    assert_eq!(
        r.stdout
            .lines()
            .filter(|l| l.starts_with("pci: 00:"))
            .count(),
        2
    );
    assert!(r.stderr.contains("i8042 reset"), "{}", r.stderr);
}

#[test]
fn a_policy_vetoes_a_config_write() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("pci-veto");
    let events = dir.join("events.jsonl");
    let guard = format!("{}:lock=0x04", policy("pci-guard"));
    let r = run_pci_guest(&["--policy", &guard, "--events", events.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    // The first write (memory and bus master on) went through; the
    // second (bus master off) was dropped.
    assert!(
        r.stdout.contains("pci: msi vector 0x40 delivered 01"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("pci: command after the second write 0006"),
        "{}",
        r.stdout
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let denied: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["kind"] == "pci-config-denied")
        .collect();
    assert_eq!(denied.len(), 1, "{text}");
    assert_eq!(denied[0]["data"]["register"], 4);
    assert_eq!(denied[0]["data"]["value"], 2);
}

#[test]
fn a_policy_keeps_device_dma_inside_its_window_and_audits_the_doorbell() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("pci-dma");
    let events = dir.join("events.jsonl");
    let guard = format!(
        "{}:bar=0xe8000000+0x1000,doorbell=0x08,dma-addr=0x10,dma-window=0x100000+0x100000",
        policy("pci-guard")
    );
    let r = run_pci_guest(&["--policy", &guard, "--events", events.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    // 0x60000 is outside the window: the address write was dropped, so
    // the guest's buffer never got the pattern.
    assert!(
        r.stdout
            .contains("pci: dma fill status 01, wrong byte at 00"),
        "{}",
        r.stdout
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["policy"] == "pci-guard")
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["doorbell", "dma-denied"], "{text}");
    assert!(text.contains("\"address\":393216"), "{text}");
}

#[test]
fn without_vfio_a_passthrough_device_is_one_clear_error() {
    let g = guest("pci.bin");
    let r = wasmvisor(&[
        "run",
        "--guest",
        g.to_str().unwrap(),
        "--device",
        "vfio=0000:01:00.0",
    ]);
    let line = r.one_error_line();
    assert!(line.contains("--device vfio=0000:01:00.0"), "{line}");
    if !std::path::Path::new("/dev/vfio/vfio").exists() {
        assert!(line.contains("/dev/vfio/vfio is missing"), "{line}");
    }
    let line =
        wasmvisor(&["run", "--guest", g.to_str().unwrap(), "--device", "nic"]).one_error_line();
    assert!(line.contains("invalid --device `nic`"), "{line}");
}
