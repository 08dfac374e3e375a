//! Two policies with overlapping and disjoint subscriptions: the first
//! loaded answers on the overlap, each answers alone on its own part, and
//! a declining policy hands the exit on.

use wasmvisor_tests::*;

/// The devices guest under the serial policy and then each of
/// `policies`, a bundled policy's name and its config; it must exit 0.
fn devices_with(policies: &[(&str, &str)]) -> Run {
    policies
        .iter()
        .fold(
            Cmd::guest("devices.bin").mode("protected").policy("serial"),
            |cmd, (name, config)| cmd.policy_with(name, config),
        )
        .expect_exit(0)
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
}

#[test]
fn first_loaded_policy_wins_on_overlap() {
    require_kvm!();
    // A: MMIO only. B: the same MMIO base (overlap) plus ports (disjoint).
    let a = ("regbank", "mmio=0xd0000000+0x1000,id=0xaaaa0001");
    let b = (
        "regbank",
        "mmio=0xd0000000+0x20,ports=0x510-0x51f,id=0xbbbb0002",
    );
    let r = devices_with(&[a, b]);
    assert_eq!(
        line(&r.stdout, "mmio 0xd0000000: "),
        "mmio 0xd0000000: aaaa0001"
    );
    assert_eq!(line(&r.stdout, "port 0x510: "), "port 0x510: bbbb0002");

    let r = devices_with(&[b, a]);
    assert_eq!(
        line(&r.stdout, "mmio 0xd0000000: "),
        "mmio 0xd0000000: bbbb0002"
    );
    assert_eq!(line(&r.stdout, "port 0x510: "), "port 0x510: bbbb0002");
    // Outside B's 0x20-byte window only A subscribes: the write and
    // read-back at 0xd0000010 is B's (inside), so check A answers alone
    // past it through the summary instead: both policies handled exits.
    assert_contains(
        &r.stderr,
        &["policy regbank: handled ", "policy regbank#2: handled "],
    );
}

#[test]
fn declining_policy_passes_exit_to_the_next() {
    require_kvm!();
    // The tracer subscribes to the register bank's ports but declines, so
    // the bank behind it answers.
    let tracer = ("io-tracer", "ports=0x510-0x51f");
    let bank = ("regbank", "ports=0x510-0x51f,id=0x12341234");
    let r = devices_with(&[tracer, bank]);
    assert_eq!(line(&r.stdout, "port 0x510: "), "port 0x510: 12341234");
    assert_eq!(line(&r.stdout, "port 0x514: "), "port 0x514: deadbeef");
    let tracer_line = line(&r.stderr, "policy io-tracer: ");
    assert_contains(tracer_line, &["handled 0, declined 3"]);
}
