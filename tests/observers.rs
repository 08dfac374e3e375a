//! Observer policies (`@observe`, ADR 0008): the io-tracer watches the
//! ticker's exits from its own thread while the counter policy answers
//! them. The ticker checks every count it reads back, so an exit answered
//! late or wrongly ends the run with a mismatch; a ring too small for the
//! observer's pace loses exits, which are counted and reported, and the
//! guest is never held.

use std::path::Path;
use std::time::Duration;

use wasmvisor_tests::{guest, json_lines, policy, require_kvm, scratch, Background};

/// Runs the ticker on 2 vCPUs for `ms`, with the io-tracer as an observer
/// with rings of `ring` exits, ahead of the counter; returns the stderr
/// and the events.
fn observed_ticker(dir: &Path, ring: &str, ms: u64) -> (String, Vec<serde_json::Value>) {
    let events = dir.join(format!("ring-{ring}.jsonl"));
    let tracer = format!("{}:@observe={ring}", policy("io-tracer"));
    let counter = format!("{}:@grant=stop-vm", policy("counter"));
    let mut vm = Background::start(
        dir,
        &format!("ring-{ring}"),
        &[
            "run",
            "--guest",
            guest("ticker.bin").to_str().unwrap(),
            "--vcpus",
            "2",
            "--serial",
            "none",
            "--policy",
            &tracer,
            "--policy",
            &counter,
            "--events",
            events.to_str().unwrap(),
        ],
    );
    std::thread::sleep(Duration::from_millis(ms));
    vm.signal("INT");
    let code = vm.wait(Duration::from_secs(20));
    let stderr = vm.stderr();
    assert_eq!(
        code, 130,
        "the ticker ran until stopped, every count right: {stderr}"
    );
    (stderr, json_lines(&events))
}

/// The numbers of the observer's summary line.
fn summary(stderr: &str, field: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("observer io-tracer:"))
        .unwrap_or_else(|| panic!("no observer line in: {stderr}"));
    let at = line.find(&format!("{field} ")).expect(field) + field.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_slow_observer_loses_exits_counts_them_and_never_holds_the_guest() {
    require_kvm!();
    let dir = scratch("observer-overflow");
    // Rings of 8 exits: the tracer formats and writes JSON per exit, far
    // slower than the ticker makes them.
    let (stderr, events) = observed_ticker(&dir, "8", 600);
    let queued = summary(&stderr, "queued");
    let observed = summary(&stderr, "observed");
    let dropped = summary(&stderr, "dropped");
    assert!(dropped > 0, "a ring of 8 overflows: {stderr}");
    assert_eq!(
        observed + dropped,
        queued,
        "every exit is observed or counted: {stderr}"
    );
    // The counter answered every exit (handled = all io exits).
    let counter = stderr
        .lines()
        .find(|l| l.starts_with("policy counter:"))
        .unwrap();
    let exits = stderr
        .lines()
        .find(|l| l.starts_with("exits: "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap();
    assert!(
        counter.contains(&format!("handled {exits},")),
        "{counter} / {exits}"
    );
    // The drops are reported in the event stream as they happen.
    let reported: u64 = events
        .iter()
        .filter(|e| e["kind"] == "observer-dropped")
        .map(|e| e["data"]["dropped"].as_u64().unwrap())
        .sum();
    assert_eq!(reported, dropped, "drop reports add up");
    let io = events.iter().filter(|e| e["kind"] == "io").count() as u64;
    assert_eq!(io, observed, "one io event per observed exit");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_observer_with_room_sees_every_exit_in_order() {
    require_kvm!();
    let dir = scratch("observer-room");
    let (stderr, events) = observed_ticker(&dir, "1048576", 200);
    assert_eq!(summary(&stderr, "dropped"), 0, "{stderr}");
    // Per vCPU, the observed exits are consecutive: OUT then IN, by seq.
    for vcpu in 0..2u64 {
        let seqs: Vec<u64> = events
            .iter()
            .filter(|e| e["kind"] == "io" && e["data"]["vcpu"] == vcpu)
            .map(|e| e["data"]["seq"].as_u64().unwrap())
            .collect();
        assert!(seqs.len() > 100, "vCPU {vcpu} observed: {}", seqs.len());
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "vCPU {vcpu}: exits in order, none missing"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
