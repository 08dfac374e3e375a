//! The PCI segment (`--device test`): the `pci` guest enumerates bus 0
//! through config mechanism #1, sizes the test device's BAR, takes its MSI
//! and MSI-X through the in-kernel LAPIC and its INTx through the IOAPIC,
//! and checks its DMA; the pci-guard policy
//! vetoes a config write and a DMA address outside its window. The same
//! guest drives the same device served by another process over vfio-user
//! (`--device vfio-user=SOCKET`), whose server sees the DMA. Without
//! VFIO, `--device vfio=...` is one error line naming what is missing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wasmvisor_tests::*;

fn run_pci_guest(extra: &[&str]) -> Run {
    let mut args = vec!["--device", "test"];
    args.extend(extra);
    run_protected_guest("pci.bin", &args)
}

/// The vfio-user test-device server, killed when dropped.
struct Server {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `wasmvisor-vfio-user-testdev` on a socket in `dir`.
fn start_server(dir: &std::path::Path) -> (Server, String) {
    let bin = root().join("target/release/wasmvisor-vfio-user-testdev");
    assert!(
        bin.is_file(),
        "{} is missing: run `make build`",
        bin.display()
    );
    let socket = dir.join("testdev.sock");
    let _ = std::fs::remove_file(&socket);
    let stderr = dir.join("server.err");
    let child = Command::new(bin)
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("the server starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the server made no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = Server { child, stderr };
    (server, socket.display().to_string())
}

/// A fresh server for the test `name`, and the `--device` argument that
/// reaches it.
fn served_device(name: &str) -> (Server, String) {
    let (server, socket) = start_server(&scratch(name));
    (server, format!("vfio-user={socket}"))
}

/// What the guest's BAR 2 sum must be: dword i is i * 0x9e3779b1, for
/// the 16384 dwords of 64 KiB.
fn bar2_sum() -> u32 {
    (0..0x4000u32).fold(0, |sum, i| sum.wrapping_add(i.wrapping_mul(0x9e37_79b1)))
}

/// The MMIO exit count in a run's summary line.
fn mmio_exits(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("exits: "))
        .unwrap_or_else(|| panic!("no exit summary in:\n{stderr}"));
    line.split(", ")
        .chain(line.split(": "))
        .find_map(|part| part.trim().strip_prefix("mmio "))
        .map_or(0, |n| n.parse().unwrap())
}

/// The `pci` guest with `device` under the policy `guard`, its events
/// written to `events`, with `extra` flags.
fn run_guarded(device: &str, guard: &str, events: &std::path::Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "--device",
        device,
        "--policy",
        guard,
        "--events",
        events.to_str().unwrap(),
    ];
    args.extend(extra);
    run_protected_guest("pci.bin", &args)
}

/// Waits for the server's report of a client that has gone.
fn server_log(server: &Server, last_line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&server.stderr).unwrap_or_default();
        if log.contains(last_line) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the device's DMA SUM of its own FILL pattern must be: the sum of
/// `0xa5 ^ i` over the 64 bytes (`wasmvisor_pci::dma_pattern`).
fn expected_sum() -> u32 {
    (0..64u32).map(|i| 0xa5 ^ i).sum()
}

#[test]
fn the_guest_enumerates_sizes_and_drives_the_test_device() {
    require_kvm!();
    let r = run_pci_guest(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_has_lines(&r.stdout, &driven_device_lines());
    assert_has_lines(
        &r.stdout,
        &[
            "pci: 00:00.0 5741:0001 class 06000000".to_string(),
            "pci: 00:01.0 5741:0002 class ff000001".to_string(),
            "pci: bar0 e8000000 size 00001000".to_string(),
            "pci: command after the second write 0002".to_string(),
            "pci: done".to_string(),
        ],
    );
    // Exactly two functions on the bus.
    assert_eq!(
        r.stdout
            .lines()
            .filter(|l| l.starts_with("pci: 00:"))
            .count(),
        2
    );
    assert_contains(&r.stderr, &["i8042 reset"]);
}

#[test]
fn a_policy_vetoes_a_config_write() {
    require_kvm!();
    let dir = scratch("pci-veto");
    let events = dir.join("events.jsonl");
    let guard = format!("{}:lock=0x04", policy("pci-guard"));
    let r = run_pci_guest(&["--policy", &guard, "--events", events.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    // The first write (memory and bus master on) went through; the
    // second (bus master off) was dropped.
    assert_has_lines(
        &r.stdout,
        &[
            "pci: msi vector 0x40 delivered 01",
            "pci: command after the second write 0006",
        ],
    );
    let denied = events_of(&events, "pci-config-denied");
    assert_eq!(denied.len(), 1, "{denied:?}");
    // An emulated device is not passed through: nothing is DMA-mapped.
    assert!(events_of(&events, "dma-mappings").is_empty());
    assert_eq!(denied[0]["data"]["register"], 4);
    assert_eq!(hex_field(&denied[0]["data"]["value"]), 2);
    assert!(hex_field(&denied[0]["data"]["rip"]) > 0, "{denied:?}");
}

#[test]
fn a_policy_keeps_device_dma_inside_its_window_and_audits_the_doorbell() {
    require_kvm!();
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
    assert_has_lines(&r.stdout, &["pci: dma fill status 01, wrong byte at 00"]);
    let ours: Vec<serde_json::Value> = json_lines(&events)
        .into_iter()
        .filter(|e| e["policy"] == "pci-guard")
        .collect();
    let kinds: Vec<&str> = ours.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    // The MSI doorbell (vector 0), the MSI-X one (vector 1), the two INTx
    // rounds, then the refused DMA address.
    assert_eq!(
        kinds,
        ["doorbell", "doorbell", "doorbell", "doorbell", "dma-denied"],
        "{ours:?}"
    );
    let rung: Vec<u64> = ours[..4]
        .iter()
        .map(|e| hex_field(&e["data"]["value"]))
        .collect();
    assert_eq!(rung, [0, 1, 0, 0]);
    let denied = &ours[4]["data"];
    assert_eq!(hex_field(&denied["address"]), 0x60000);
    assert_eq!(hex_field(&denied["window-base"]), 0x100000);
    assert_eq!(denied["window-len"], 0x100000);
}

#[test]
fn without_vfio_a_passthrough_device_is_one_clear_error() {
    let line = Cmd::guest("pci.bin")
        .device("vfio=0000:01:00.0")
        .run()
        .one_error_line();
    assert_contains(&line, &["--device vfio=0000:01:00.0"]);
    if !std::path::Path::new("/dev/vfio/vfio").exists() {
        assert_contains(&line, &["/dev/vfio/vfio is missing"]);
    }
    let line = Cmd::guest("pci.bin").device("nic").run().one_error_line();
    assert_contains(&line, &["invalid --device `nic`"]);
}

#[test]
fn the_guest_drives_a_vfio_user_device_server_which_sees_its_dma() {
    require_kvm!();
    let (server, device) = served_device("pci-vfio-user");
    let r = run_protected_guest("pci.bin", &["--device", &device]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_has_lines(&r.stdout, &driven_device_lines());
    assert_has_lines(
        &r.stdout,
        &[
            "pci: 00:01.0 5741:0002 class ff000001".to_string(),
            // BAR 2 (64 KiB) is placed first, being the larger.
            "pci: bar0 e8010000 size 00001000".to_string(),
            "pci: bar2 e8000000".to_string(),
            format!("pci: bar2 sum {:08x}", bar2_sum()),
        ],
    );
    // MSI, MSI-X and INTx went to KVM irqfds, the VMM delivered nothing
    // itself, and BAR 2 was a memslot: its 32768 accesses made no MMIO
    // exit (the 18 left are BAR 0's registers and MSI-X table). The
    // second INTx round only arrives if the EOI's resample eventfd made
    // the VMM unmask the line, which VFIO (and the server) mask on firing.
    assert!(
        r.stderr.contains(&format!(
            "device {device}: 3 interrupt routes through KVM irqfds, 0 interrupts delivered by the VMM, 65536 bytes of BARs mapped, 67108864 bytes of RAM DMA-mapped"
        )),
        "{}",
        r.stderr
    );
    assert_eq!(mmio_exits(&r.stderr), 18, "{}", r.stderr);
    // The server reports once the VM has gone away.
    let log = server_log(&server, "bar2 sum");
    assert_has_lines(
        &log,
        &[
            "wasmvisor-vfio-user-testdev: dma map iova 0x0 size 0x4000000",
            "wasmvisor-vfio-user-testdev: device dma write of 64 bytes at 0x60000",
            "wasmvisor-vfio-user-testdev: device dma read of 64 bytes at 0x60000",
            // What the guest wrote through the mapping is the server's.
            &format!("wasmvisor-vfio-user-testdev: bar2 sum {:08x}", bar2_sum()),
        ],
    );
}

#[test]
fn a_policy_vetoes_a_config_write_to_a_vfio_user_device_and_learns_its_dma_mappings() {
    require_kvm!();
    let (_server, device) = served_device("pci-vfio-user-veto");
    let events = scratch("pci-vfio-user-veto-events").join("events.jsonl");
    let guard = format!("{}:lock=0x04", policy("pci-guard"));
    let r = run_guarded(&device, &guard, &events, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_has_lines(&r.stdout, &["pci: command after the second write 0006"]);
    // All 64 MiB of guest RAM were DMA-mapped into the server.
    let mapped = events_of(&events, "dma-mappings");
    assert_eq!(mapped.len(), 1, "{mapped:?}");
    assert_eq!(
        mapped[0]["data"]["ranges"],
        serde_json::json!([{"base": "0x0", "len": 67108864}])
    );
}

#[test]
fn a_vfio_user_socket_nobody_serves_is_one_clear_error() {
    let dir = scratch("pci-vfio-user-none");
    let socket = dir.join("nobody.sock");
    let device = format!("vfio-user={}", socket.display());
    let g = guest("pci.bin");
    let line =
        wasmvisor(&["run", "--guest", g.to_str().unwrap(), "--device", &device]).one_error_line();
    assert!(
        line.contains(&format!("--device {device}: cannot connect")),
        "{line}"
    );
}

#[test]
fn a_policy_subscribed_to_one_page_of_a_mapped_bar_traps_only_that_page() {
    require_kvm!();
    let (server, device) = served_device("pci-vfio-user-trap");
    let events = scratch("pci-vfio-user-trap-events").join("events.jsonl");
    // The fourth page of BAR 2, audited as if it were a doorbell page.
    let guard = format!(
        "{}:bar=0xe8003000+0x1000,doorbell=0x08",
        policy("pci-guard")
    );
    let r = run_guarded(&device, &guard, &events, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_has_lines(&r.stdout, &[format!("pci: bar2 sum {:08x}", bar2_sum())]);
    // Fifteen pages stayed mapped; the trapped one made 1024 writes and
    // 1024 reads exit, on top of BAR 0's 18 accesses.
    assert_contains(&r.stderr, &["61440 bytes of BARs mapped"]);
    assert_eq!(mmio_exits(&r.stderr), 18 + 2048, "{}", r.stderr);
    // The policy saw the write at offset 8 of its page: dword 0xc02.
    let doorbells = events_of(&events, "doorbell");
    assert_eq!(doorbells.len(), 1, "{doorbells:?}");
    assert_eq!(
        hex_field(&doorbells[0]["data"]["value"]),
        u64::from(0xc02u32.wrapping_mul(0x9e37_79b1))
    );
    // Trapped or mapped, every byte reached the server.
    let log = server_log(&server, "bar2 sum");
    assert_has_lines(
        &log,
        &[format!(
            "wasmvisor-vfio-user-testdev: bar2 sum {:08x}",
            bar2_sum()
        )],
    );
}

#[test]
fn a_dma_window_confines_the_emulated_devices_dma() {
    require_kvm!();
    // The guest's buffer at 0x60000 lies outside the window: the device's
    // FILL fails with a memory error and the buffer keeps its zeros.
    let r = run_pci_guest(&["--dma-window", "0x100000+0x100000"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_has_lines(
        &r.stdout,
        &[
            "pci: msi vector 0x40 delivered 01",
            "pci: dma fill status 83, wrong byte at 00",
            "pci: done",
        ],
    );
    // A window around the buffer lets the same DMA through.
    let r = run_pci_guest(&["--dma-window", "0x60000+4K"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_has_lines(
        &r.stdout,
        &[
            "pci: dma fill status 01, every byte ok".to_string(),
            format!("pci: dma sum {:08x}", expected_sum()),
        ],
    );
}

#[test]
fn a_dma_window_limits_what_a_vfio_user_device_can_reach() {
    require_kvm!();
    let (server, device) = served_device("pci-vfio-user-window");
    let events = scratch("pci-vfio-user-window-events").join("events.jsonl");
    let guard = policy("pci-guard");
    let r = run_guarded(&device, &guard, &events, &["--dma-window", "0x100000+1M"]);
    assert_eq!(r.code, 0, "{r:?}");
    // Everything but DMA works as before; the buffer at 0x60000 is not
    // mapped, so the device's FILL fails and the buffer stays zero.
    assert_has_lines(
        &r.stdout,
        &[
            "pci: msix vector 0x41 delivered 01".to_string(),
            "pci: dma fill status 83, wrong byte at 00".to_string(),
            format!("pci: bar2 sum {:08x}", bar2_sum()),
        ],
    );
    assert!(
        r.stderr
            .contains("65536 bytes of BARs mapped, 1048576 bytes of RAM DMA-mapped"),
        "{}",
        r.stderr
    );
    // Policies learn the narrowed mapping.
    let mapped = events_of(&events, "dma-mappings");
    assert_eq!(mapped.len(), 1, "{mapped:?}");
    assert_eq!(
        mapped[0]["data"]["ranges"],
        serde_json::json!([{"base": "0x100000", "len": 1048576}])
    );
    // The server was given only the window, and its device's DMA to the
    // buffer failed there, as an IOMMU fault would.
    let log = server_log(&server, "bar2 sum");
    assert_has_lines(
        &log,
        &[
            "wasmvisor-vfio-user-testdev: dma map iova 0x100000 size 0x100000",
            "wasmvisor-vfio-user-testdev: device dma write of 64 bytes at 0x60000 refused: not DMA-mapped",
        ],
    );
    assert!(!log.contains("dma map iova 0x0 "), "{log}");
}

#[test]
fn a_bad_dma_window_is_one_clear_error() {
    let run = |window: &str| {
        Cmd::guest("pci.bin")
            .device("test")
            .args(["--dma-window", window])
            .run()
            .one_error_line()
    };
    let line = run("0x1800+4K");
    assert_contains(
        &line,
        &["--dma-window: DMA window 0x1800+0x1000 is not aligned to 4 KiB pages"],
    );
    let line = run("0x100000");
    assert_contains(&line, &["invalid --dma-window `0x100000`: use BASE+SIZE"]);
    assert!(run("0x1000+0").contains("DMA window at 0x1000 is empty"));
}

/// What the pci guest prints once it has driven the test device, emulated
/// or served over vfio-user: its ID, the three kinds of interrupt (slot 1's
/// INTA# is IOAPIC pin 17; both rounds arrive) and the DMA.
fn driven_device_lines() -> Vec<String> {
    vec![
        "pci: id WVTD".to_string(),
        "pci: msi vector 0x40 delivered 01".to_string(),
        "pci: msix vector 0x41 delivered 01".to_string(),
        "pci: intx line 11 vector 0x42 delivered 02".to_string(),
        "pci: dma fill status 01, every byte ok".to_string(),
        format!("pci: dma sum {:08x}", expected_sum()),
    ]
}

#[test]
fn a_vm_with_a_passed_through_device_is_not_snapshotted() {
    require_kvm!();
    let (_server, device) = served_device("pci-snapshot");
    let dir = scratch("pci-snapshot-vm");
    let ctl = dir.join("ctl");
    let counter = format!("{}:@grant=stop-vm", policy("counter"));
    let mut vm = Background::start(
        &dir,
        "vm",
        &[
            "run",
            "--guest",
            guest("ticker.bin").to_str().unwrap(),
            "--serial",
            "none",
            "--policy",
            &counter,
            "--device",
            &device,
            "--control",
            ctl.to_str().unwrap(),
        ],
    );
    vm.wait_for_file(&ctl, Duration::from_secs(20));
    for op in [vec!["snapshot", "SNAP"], vec!["baseline"]] {
        let mut args = vec!["vm", op[0], "--control", ctl.to_str().unwrap()];
        let snap = dir.join("snap");
        if op.len() > 1 {
            args.push(snap.to_str().unwrap());
        }
        let r = wasmvisor(&args);
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(
            r.one_error_line(),
            "wasmvisor: error: cannot snapshot this VM: it has a passed-through device, whose state lives outside wasmvisor"
        );
        assert!(!snap.exists(), "nothing is written");
    }
    vm.signal("INT");
    assert_eq!(vm.wait(Duration::from_secs(10)), 130, "{}", vm.stderr());
    std::fs::remove_dir_all(&dir).ok();
}
