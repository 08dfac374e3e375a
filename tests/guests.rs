//! Each example guest under the policies it exercises, asserting what the
//! guest itself printed about what it saw.

use wasmvisor_tests::*;

/// The lines the devices guest prints under the demo policies.
const DEVICES_DEMO: &[&str] = &[
    "devices: start",
    "scratch: 000000a5",
    "port 0x510: 57565342",
    "port 0x514: deadbeef",
    "port 0x600: ffffffff",
    "mmio 0xd0000000: 57565342",
    "mmio 0xd0000010: 12345678",
    "mmio 0xe0000000: ffffffff",
    "msr 0x50000000: 1122334455667788",
    "msr 0x50000001: 0000cafef00dbabe",
    "msr 0x174: 0000000000000010",
    "#GP",
    "msr 0x175: 0000000000000000",
];

fn assert_lines_in_order(out: &str, expected: &[&str]) {
    let lines: Vec<&str> = out.lines().collect();
    let mut at = 0;
    for want in expected {
        match lines[at..].iter().position(|l| l == want) {
            Some(i) => at += i + 1,
            None => panic!("missing line {want:?} (in order) in guest output:\n{out}"),
        }
    }
}

#[test]
fn demo_runs_devices_guest_under_default_policies() {
    require_kvm!();
    let r = wasmvisor(&["run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_lines_in_order(&r.stdout, DEVICES_DEMO);
    assert_contains(&r.stdout, &["cpuid 0x40000000: wasmvisor...\n"]);
    assert!(r.stdout.ends_with("devices: done\n"), "{}", r.stdout);
    // The summary names exit kinds and every policy, with the serial
    // policy having handled the console.
    assert_contains(&r.stderr, &["wasmvisor: all vCPUs halted", "exits: "]);
    let serial = r
        .stderr
        .lines()
        .find(|l| l.starts_with("policy serial: handled "))
        .unwrap_or_else(|| panic!("no serial line in summary: {}", r.stderr));
    let handled: u64 = serial["policy serial: handled ".len()..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // At least two exits (LSR poll + THR write) per printed byte.
    assert!(
        handled >= 2 * r.stdout.len() as u64,
        "{serial} for {} bytes",
        r.stdout.len()
    );
    for p in ["regbank", "msr-guard", "cpuid-mask"] {
        assert!(r.stderr.contains(&format!("policy {p}: ")), "{}", r.stderr);
    }
}

#[test]
fn denied_msr_is_logged_by_the_guard() {
    require_kvm!();
    let r = wasmvisor(&["run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_contains(&r.stderr, &["msr-guard: denied rdmsr 0x175 on vcpu 0"]);
}

#[test]
fn cpuid_mask_sets_vendor_seen_by_guest() {
    require_kvm!();
    let config = assets().join("demo.toml");
    let r = Cmd::new()
        .args(["--config", config.to_str().unwrap()])
        .policy("serial")
        .policy_with("cpuid-mask", "vendor=WasmVisorCPU,hypervisor=TestHVsig")
        .expect_exit(0);
    assert_contains(
        &r.stdout,
        &[
            "cpuid 0x0: WasmVisorCPU\n",
            "cpuid 0x40000000: TestHVsig...\n",
        ],
    );
    // Without the register bank and MSR guard the defaults answer.
    assert_contains(
        &r.stdout,
        &["port 0x510: ffffffff\n", "mmio 0xd0000000: ffffffff\n"],
    );
    // 0x50000000 is unknown to KVM and unclaimed: #GP.
    assert_contains(&r.stdout, &["#GP\nmsr 0x50000000: 0000000000000000\n"]);
}

#[test]
fn hello_elf_long_mode_through_serial_policy() {
    require_kvm!();
    let r = Cmd::guest("hello.elf").policy("serial").expect_exit(0);
    assert_eq!(r.stdout, "Hello from a wasmvisor guest!\n");
    assert_contains(&r.stderr, &["policy serial: handled "]);
}

#[test]
fn hello_elf_with_native_serial_and_no_policy() {
    require_kvm!();
    let r = Cmd::guest("hello.elf")
        .serial("native")
        .arg("--stats")
        .expect_exit(0);
    assert_eq!(r.stdout, "Hello from a wasmvisor guest!\n");
    assert_contains(&r.stderr, &["built-in devices: "]);
    assert!(!r.stderr.contains("built-in devices: 0,"), "{}", r.stderr);
    assert_contains(&r.stderr, &["stats: {"]);
}

#[test]
fn smp_guest_real_mode_on_four_vcpus() {
    require_kvm!();
    let r = Cmd::guest("smp.bin")
        .mode("real")
        .vcpus(4)
        .policy("serial")
        .expect_exit(0);
    let mut lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.pop(), Some("smp: 4 cpus up"), "{}", r.stdout);
    lines.sort();
    assert_eq!(
        lines,
        ["cpu 0 up", "cpu 1 up", "cpu 2 up", "cpu 3 up"],
        "{}",
        r.stdout
    );
}

#[test]
fn io_tracer_writes_json_lines_and_declines() {
    require_kvm!();
    let r = Cmd::guest("hello.elf")
        .policy_with("io-tracer", "ports=0x3f8-0x3ff")
        .policy("serial")
        .events()
        .expect_exit(0);
    // The tracer declined, so the serial policy still printed.
    assert_eq!(r.stdout, "Hello from a wasmvisor guest!\n");
    let records = r.events();
    let outs: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["kind"] == "io" && r["data"]["dir"] == "out" && r["data"]["port"] == 0x3f8)
        .collect();
    let printed: String = outs
        .iter()
        .map(|r| hex_field(&r["data"]["data"]) as u8 as char)
        .collect();
    assert_eq!(printed, "Hello from a wasmvisor guest!\n");
    assert!(records
        .iter()
        .all(|r| r["policy"] == "io-tracer" && r["vcpu"] == 0));
    // Schema 2: `schema` first on every line, RIP a hex string, port and
    // size numbers.
    assert_event_schema(r.events_file());
    assert!(records.iter().all(|r| r["schema"] == EVENT_SCHEMA));
    for r in &outs {
        assert!(hex_field(&r["data"]["rip"]) > 0, "{r}");
        assert_eq!(r["data"]["size"], 1, "{r}");
    }
}
