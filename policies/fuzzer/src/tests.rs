use super::*;
use wasmvisor_policy_sdk::doorbell::{CRASH, DONE, GET_INPUT, HELLO, LOG, SNAPSHOT};
use wasmvisor_policy_sdk::testing::{exit, Harness, SnapshotCall};
use wasmvisor_policy_sdk::{Action, LogLevel, Reg, RegWrite};

/// The guest's input buffer: GVA `BUF` maps to GPA `BUF_GPA`.
const BUF: u64 = 0x40_0000;
const BUF_GPA: u64 = 0x10_0000;
const BUF_LEN: u64 = 0x1000;

/// The fuzzer loaded with `pairs`, granted what it asks and `snapshot`,
/// on a guest with its buffer mapped.
fn fuzzer(pairs: &[(&str, &str)]) -> Harness<Fuzzer> {
    let h = Harness::<Fuzzer>::new(pairs).unwrap();
    h.host()
        .grant_snapshot()
        .map_ram(BUF_GPA, BUF_LEN)
        .map_virt(BUF, BUF_GPA, BUF_LEN);
    h
}

/// The guest rings call `n` with `args` in RBX, RCX, RSI, RDI.
fn call(h: &mut Harness<Fuzzer>, n: u16, args: [u64; 4]) -> Verdict {
    for (reg, value) in doorbell::ARG_REGS.into_iter().zip(args) {
        h.host().set_reg(reg, value);
    }
    h.exit(exit::io_write(doorbell::PORT, 4, doorbell::number(n)))
}

/// RAX and RBX of a doorbell reply.
fn answer(v: &Verdict) -> (u64, u64) {
    match v {
        Verdict::Handled(a) => match a[..] {
            [Action::SetReg(RegWrite {
                reg: Reg::Rax,
                value: status,
            }), Action::SetReg(RegWrite {
                reg: Reg::Rbx,
                value,
            })] => (status, value),
            _ => panic!("not a reply: {a:?}"),
        },
        Verdict::Decline => panic!("declined"),
    }
}

/// The stop request of a verdict, as (clean, reason).
fn stopped(v: &Verdict) -> (bool, String) {
    match v {
        Verdict::Handled(a) => match &a[..] {
            [Action::Stop(s)] => (s.clean, s.reason.clone()),
            other => panic!("not a stop: {other:?}"),
        },
        Verdict::Decline => panic!("declined"),
    }
}

/// HELLO and SNAPSHOT: the fuzzer after the guest set up.
fn started(pairs: &[(&str, &str)]) -> Harness<Fuzzer> {
    let mut h = fuzzer(pairs);
    assert_eq!(answer(&call(&mut h, HELLO, [1, 0, 0, 0])), (0, 1));
    assert_eq!(answer(&call(&mut h, SNAPSHOT, [0; 4])), (0, 0));
    h
}

/// GET_INPUT with `capacity`: the bytes the fuzzer wrote, checked
/// against the length it answered.
fn input(h: &mut Harness<Fuzzer>, capacity: u64) -> Vec<u8> {
    let (status, len) = answer(&call(h, GET_INPUT, [BUF, capacity, 0, 0]));
    assert_eq!(status, doorbell::OK);
    assert!(len <= capacity, "{len} > {capacity}");
    let bytes = h.host().phys(BUF_GPA, len as usize).unwrap();
    assert_eq!(Some(&bytes), h.policy().last.as_ref());
    bytes
}

fn done(h: &mut Harness<Fuzzer>, code: u64) -> Verdict {
    call(h, DONE, [code, 0, 0, 0])
}

/// `n` runs that end in DONE with `code`, each reset; their inputs.
fn runs(h: &mut Harness<Fuzzer>, n: usize, capacity: u64, code: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let i = input(h, capacity);
            let resets = h.host().resets();
            assert_eq!(done(h, code), Verdict::resume());
            assert_eq!(h.host().resets(), resets + 1);
            i
        })
        .collect()
}

fn config_err(pairs: &[(&str, &str)]) -> String {
    Fuzzer::from_config(&pairs.iter().copied().collect()).unwrap_err()
}

#[test]
fn config_defaults_and_subscriptions() {
    let (f, s) = Fuzzer::from_config(&Config::default()).unwrap();
    assert_eq!(
        f.settings,
        Settings {
            port: 0x0ad0,
            seed: 1,
            max_execs: 1_000_000,
            stop_on_crash: true,
            stats_every: 1000,
            max_len: 256,
        }
    );
    // No seeds: one empty input to mutate.
    assert_eq!((f.seeds, f.corpus.len()), (0, 1));
    assert!(f.corpus[0].is_empty());
    assert_eq!((s.ports[0].first, s.ports[0].last), (0x0ad0, 0x0ad0));
    assert_eq!(s.events, EventSet::SHUTDOWN);
    assert_eq!(
        s.capabilities,
        Capabilities::SET_REGISTERS | Capabilities::WRITE_MEMORY | Capabilities::STOP_VM
    );

    let pairs = [
        ("seeds", "0x4142+43"),
        ("seeds", "+ff00+"),
        ("seed", "0x99"),
        ("max-execs", "0"),
        ("stop-on-crash", "false"),
        ("stats-every", "10"),
        ("port", "0x510"),
        ("max-len", "3"),
    ];
    let (f, s) = Fuzzer::from_config(&pairs.into_iter().collect()).unwrap();
    assert_eq!(f.corpus, [vec![0x41, 0x42], vec![0x43], vec![0xff, 0x00]]);
    assert_eq!(f.seeds, 3);
    assert_eq!(
        f.settings,
        Settings {
            port: 0x510,
            seed: 0x99,
            max_execs: 0,
            stop_on_crash: false,
            stats_every: 10,
            max_len: 3,
        }
    );
    assert_eq!(s.ports[0].first, 0x510);
}

#[test]
fn config_errors() {
    assert_eq!(
        config_err(&[("seeds2", "00")]),
        "unknown config key `seeds2`"
    );
    assert_eq!(
        config_err(&[("seeds", "00+abc")]),
        "config key `seeds`: seed 2: `abc` has an odd number of hex digits"
    );
    assert_eq!(
        config_err(&[("seeds", "zz")]),
        "config key `seeds`: seed 1: `zz` is not hex"
    );
    assert_eq!(
        config_err(&[("seeds", "000000"), ("max-len", "2")]),
        "config key `seeds`: seed 1 is 3 bytes, longer than max-len (2)"
    );
    assert!(config_err(&[("max-len", "0")]).contains("between 1 and 16384"));
    assert!(config_err(&[("max-len", "16385")]).contains("between 1 and 16384"));
    assert!(config_err(&[("port", "0x10000")]).contains("too large"));
    assert!(config_err(&[("stop-on-crash", "maybe")]).contains("not true or false"));
    assert!(config_err(&[("max-execs", "-1")]).contains("not a number"));
    assert!(config_err(&[("seed", "x")]).contains("not a number"));
    assert!(Harness::<Fuzzer>::new(&[("stats-every", "")]).is_err());
}

#[test]
fn the_flow_from_hello_to_the_first_finding() {
    let mut h = fuzzer(&[("seeds", "41424344+45")]);

    // HELLO: the fuzzer's version in RBX.
    assert_eq!(
        call(&mut h, HELLO, [1, 0, 0, 0]),
        doorbell::ok(doorbell::VERSION)
    );
    assert!(h.host().snapshot_calls().is_empty());

    // SNAPSHOT: the baseline is requested, fuzzing starts.
    assert_eq!(call(&mut h, SNAPSHOT, [0; 4]), doorbell::ok(0));
    assert_eq!(h.host().snapshot_calls(), [SnapshotCall::Baseline]);
    assert_eq!(
        h.host().events_of("fuzz-start"),
        [
            r#"{"seeds":2,"corpus":2,"seed":"0x1","max_len":256,"max_execs":1000000,"stop_on_crash":true,"guest_version":1}"#
        ]
    );

    // GET_INPUT: the first seed, written at the buffer, its length in RBX.
    assert_eq!(call(&mut h, GET_INPUT, [BUF, 64, 0, 0]), doorbell::ok(4));
    assert_eq!(h.host().phys(BUF_GPA, 4).unwrap(), b"ABCD");

    // DONE: the VM goes back to the baseline.
    done(&mut h, 0);
    assert_eq!(
        h.host().snapshot_calls(),
        [SnapshotCall::Baseline, SnapshotCall::Reset]
    );
    assert_eq!(h.policy().execs, 1);

    // The guest resumes after SNAPSHOT: the second seed, then mutants.
    assert_eq!(input(&mut h, 64), b"E");
    done(&mut h, 0);
    let mutant = input(&mut h, 64);
    assert!(mutant.len() <= 64);

    // CRASH: a finding with the input, then a clean stop.
    let v = call(&mut h, CRASH, [14, 0x40_1234, 0xdead_0000, 0]);
    let (clean, reason) = stopped(&v);
    assert!(clean);
    assert!(reason.contains("crash (vector 14) at 0x401234"), "{reason}");
    let finding = Object::new()
        .u64("n", 1)
        .str("kind", "crash")
        .u64("vector", 14)
        .hex("rip", 0x40_1234)
        .hex("extra", 0xdead_0000)
        .str("input", &to_hex(&mutant))
        .u64("len", mutant.len() as u64)
        .u64("execs", 3)
        .finish();
    assert_eq!(h.host().events_of("finding"), [finding]);
    assert_eq!(
        h.host().events_of("fuzz-stop"),
        [r#"{"reason":"finding","execs":3,"findings":1,"corpus":2}"#]
    );
    // No reset after the finding: the VM stops where it crashed.
    assert_eq!(h.host().resets(), 2);
    let warn = h
        .host()
        .logs()
        .into_iter()
        .find(|l| l.level == LogLevel::Warn)
        .unwrap();
    assert!(
        warn.msg.starts_with("fuzzer: finding 1: crash"),
        "{}",
        warn.msg
    );
}

#[test]
fn without_the_snapshot_grant_the_run_stops_dirty() {
    let mut h = Harness::<Fuzzer>::new(&[]).unwrap();
    let (clean, reason) = stopped(&call(&mut h, SNAPSHOT, [0; 4]));
    assert!(!clean);
    assert_eq!(
        reason,
        "fuzzer: snapshot-baseline failed: not-granted (run the fuzzer with @grant=snapshot)"
    );
    let logs = h.host().logs();
    assert_eq!(logs.len(), 1);
    assert_eq!(
        (logs[0].level, logs[0].msg.as_str()),
        (LogLevel::Error, &*reason)
    );
    assert_eq!(
        h.host().events_of("fuzz-stop"),
        [r#"{"reason":"error","execs":0,"findings":0,"corpus":1}"#]
    );
    assert!(h.host().events_of("fuzz-start").is_empty());

    // A VM that cannot snapshot.
    let mut h = fuzzer(&[]);
    h.host().set_snapshot_supported(false);
    let (clean, reason) = stopped(&call(&mut h, SNAPSHOT, [0; 4]));
    assert!(!clean);
    assert!(reason.contains("unsupported"), "{reason}");
}

#[test]
fn a_run_ending_before_snapshot_stops_dirty() {
    let mut h = fuzzer(&[]);
    input(&mut h, 16);
    let (clean, reason) = stopped(&done(&mut h, 0));
    assert!(!clean);
    assert!(reason.contains("no baseline"), "{reason}");
    assert_eq!(h.host().resets(), 0);
}

#[test]
fn a_second_snapshot_keeps_the_first_baseline() {
    let mut h = started(&[]);
    assert_eq!(call(&mut h, SNAPSHOT, [0; 4]), doorbell::ok(0));
    assert_eq!(h.host().baselines(), 1);
    assert_eq!(h.host().events_of("fuzz-start").len(), 1);
}

#[test]
fn go_on_after_findings_when_asked() {
    let mut h = started(&[("stop-on-crash", "false"), ("seeds", "00")]);
    assert_eq!(input(&mut h, 8), [0]);
    // The CRASH is answered by a reset, not a stop.
    let v = call(&mut h, CRASH, [6, 0x1000, 0, 0]);
    assert_eq!(v, Verdict::resume());
    assert_eq!(h.host().resets(), 1);
    runs(&mut h, 3, 8, 0);
    // A triple fault is a finding too, with the exit's RIP.
    h.host().set_reg(Reg::Rip, 0xbad);
    h.exit(exit::shutdown(ShutdownReason::TripleFault));
    assert_eq!(h.host().resets(), 5);
    let findings = h.host().events_of("finding");
    assert_eq!(findings.len(), 2);
    assert!(findings[0].starts_with(
        r#"{"n":1,"kind":"crash","vector":6,"rip":"0x1000","extra":"0x0","input":"00","len":1,"execs":1}"#
    ));
    assert!(
        findings[1].starts_with(
            r#"{"n":2,"kind":"triple-fault","vector":null,"rip":"0xbad","extra":null,"input":""#
        ),
        "{}",
        findings[1]
    );
    assert!(findings[1].ends_with(r#","execs":5}"#), "{}", findings[1]);
    assert_eq!((h.policy().execs, h.policy().findings), (5, 2));
    assert!(h.host().events_of("fuzz-stop").is_empty());
}

#[test]
fn shutdowns_before_the_baseline_and_entry_failures() {
    // Before SNAPSHOT: not fuzzing yet, the host handles it.
    let mut h = fuzzer(&[]);
    assert!(h
        .exit(exit::shutdown(ShutdownReason::TripleFault))
        .is_decline());
    assert!(h.host().events_of("finding").is_empty());

    // An entry failure is not the guest's doing.
    let mut h = started(&[]);
    let (clean, reason) = stopped(&h.exit(exit::shutdown(ShutdownReason::EntryFailure)));
    assert!(!clean);
    assert!(reason.contains("entry failed"), "{reason}");
    assert!(h.host().events_of("finding").is_empty());

    // An internal error is a finding; the first one stops the run.
    let mut h = started(&[]);
    input(&mut h, 4);
    let (clean, _) = stopped(&h.exit(exit::shutdown(ShutdownReason::InternalError)));
    assert!(clean);
    assert!(h.host().events_of("finding")[0].contains(r#""kind":"internal-error""#));
}

#[test]
fn max_execs_stops_cleanly() {
    let mut h = started(&[("max-execs", "3"), ("stats-every", "2")]);
    // Without seeds the first mutant, with the first result code, joins
    // the empty input in the corpus.
    runs(&mut h, 2, 16, 0);
    input(&mut h, 16);
    let (clean, reason) = stopped(&done(&mut h, 0));
    assert!(clean);
    assert_eq!(reason, "fuzzer: 3 execs, 0 findings: max-execs reached");
    assert_eq!(h.host().resets(), 2);
    assert_eq!(
        h.host().events_of("fuzz-stats"),
        [r#"{"execs":2,"findings":0,"corpus":2}"#]
    );
    assert_eq!(
        h.host().events_of("fuzz-stop"),
        [r#"{"reason":"max-execs","execs":3,"findings":0,"corpus":2}"#]
    );
}

#[test]
fn stats_every_n_execs_or_never() {
    let mut h = started(&[("stats-every", "5")]);
    runs(&mut h, 12, 16, 0);
    assert_eq!(h.host().events_of("fuzz-stats").len(), 2);
    let mut h = started(&[("stats-every", "0")]);
    runs(&mut h, 12, 16, 0);
    assert!(h.host().events_of("fuzz-stats").is_empty());
}

#[test]
fn the_same_seed_gives_the_same_inputs() {
    let run = |seed: &str| {
        let mut h = started(&[("seed", seed), ("seeds", "000102030405+ffff")]);
        runs(&mut h, 200, 32, 0)
    };
    let a = run("7");
    assert_eq!(a, run("7"));
    assert_ne!(a, run("8"));
    // The seeds come first, as given.
    assert_eq!(a[0], [0, 1, 2, 3, 4, 5]);
    assert_eq!(a[1], [0xff, 0xff]);
    // Then mutants, most of them new.
    let distinct: BTreeSet<_> = a[2..].iter().collect();
    assert!(distinct.len() > 150, "{}", distinct.len());
}

#[test]
fn inputs_never_exceed_the_capacity_or_max_len() {
    let mut h = started(&[("seeds", "00112233445566778899"), ("max-len", "12")]);
    // The seed is cut to a smaller buffer.
    assert_eq!(input(&mut h, 4), [0x00, 0x11, 0x22, 0x33]);
    done(&mut h, 0);
    for capacity in [0, 1, 3, 7, 11, 12, 13, 4096, u64::MAX] {
        for _ in 0..200 {
            let i = input(&mut h, capacity);
            assert!(
                i.len() as u64 <= capacity.min(12),
                "{capacity}: {}",
                i.len()
            );
            done(&mut h, 0);
        }
    }
}

#[test]
fn new_result_codes_grow_the_corpus() {
    let mut h = started(&[("seeds", "aa")]);
    // A seed never joins again, whatever code it gives.
    runs(&mut h, 1, 8, 1);
    assert_eq!(h.policy().corpus.len(), 1);
    // A mutant with a new code joins; one with a code seen does not.
    let joined = runs(&mut h, 1, 8, 2);
    runs(&mut h, 3, 8, 2);
    assert_eq!(h.policy().corpus.len(), 2);
    assert_eq!(h.policy().corpus[1], joined[0]);
    runs(&mut h, 1, 8, 3);
    assert_eq!(h.policy().corpus.len(), 3);
}

#[test]
fn bad_buffers_and_unknown_calls() {
    let mut h = started(&[("seeds", "01")]);
    let (status, _) = answer(&call(&mut h, GET_INPUT, [0x9999_0000, 16, 0, 0]));
    assert_eq!(status, doorbell::BAD_ADDRESS);
    assert!(h.host().logs()[0].msg.contains("not-mapped"));
    assert_eq!(
        call(&mut h, 9, [0; 4]),
        doorbell::reply(doorbell::UNKNOWN_CALL, 0)
    );
    // Not calls: declined.
    assert!(h
        .exit(exit::io_write(doorbell::PORT, 1, doorbell::number(DONE)))
        .is_decline());
    assert!(h.exit(exit::io_read(doorbell::PORT, 4)).is_decline());
    assert!(h.exit(exit::io_write(doorbell::PORT, 4, 4)).is_decline());
    assert_eq!(h.policy().execs, 0);
}

#[test]
fn log_reads_the_guest_text() {
    let mut h = started(&[]);
    h.host().put_virt(BUF + 0x100, b"target ready\n");
    assert_eq!(call(&mut h, LOG, [BUF + 0x100, 13, 0, 0]), doorbell::ok(13));
    let line = h.host().logs().pop().unwrap();
    assert_eq!(
        (line.level, line.msg.as_str()),
        (LogLevel::Info, "fuzzer: guest: target ready")
    );
    // Long text is cut; a bad address is status 3.
    assert_eq!(call(&mut h, LOG, [BUF, 4000, 0, 0]), doorbell::ok(1024));
    let (status, _) = answer(&call(&mut h, LOG, [0x10, 4, 0, 0]));
    assert_eq!(status, doorbell::BAD_ADDRESS);
}

#[test]
fn another_port() {
    let mut h = fuzzer(&[("port", "0x510")]);
    assert!(call(&mut h, HELLO, [1, 0, 0, 0]).is_decline());
    let v = h.exit(exit::io_write(0x510, 4, doorbell::number(HELLO)));
    assert_eq!(v, doorbell::ok(1));
}

#[test]
fn state_carries_counts_and_the_baseline() {
    let mut h = started(&[("stop-on-crash", "false")]);
    runs(&mut h, 3, 8, 0);
    input(&mut h, 8);
    call(&mut h, CRASH, [13, 0, 0, 0]);
    let state = h.save_state();
    assert_eq!(state.len(), 18);
    assert_eq!(&state[..2], [1, 1]);

    // A new generation keeps counting and can reset at once.
    let mut next = fuzzer(&[("stop-on-crash", "false")]);
    // The host keeps the old generation's baseline.
    next.host().run(host::snapshot_baseline).unwrap();
    next.restore_state(&state).unwrap();
    assert_eq!((next.policy().execs, next.policy().findings), (4, 1));
    input(&mut next, 8);
    done(&mut next, 0);
    assert_eq!(next.host().resets(), 1);
    assert_eq!(next.policy().execs, 5);

    let mut fresh = fuzzer(&[]);
    assert_eq!(fresh.restore_state(&[]), Ok(()));
    assert_eq!(fresh.save_state()[..2], [1, 0]);
    assert!(fresh.restore_state(&[1, 2, 3]).is_err());
    let mut wrong = state.clone();
    wrong[0] = 2;
    assert!(fresh
        .restore_state(&wrong)
        .unwrap_err()
        .contains("format 1"));
}

#[test]
fn hex_round_trip() {
    assert_eq!(to_hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    assert_eq!(from_hex("00AB7f"), Ok(vec![0x00, 0xab, 0x7f]));
    assert_eq!(from_hex("0x0102"), Ok(vec![1, 2]));
    assert_eq!(from_hex(""), Ok(vec![]));
    assert!(from_hex("0g").is_err());
    assert!(from_hex("+1").is_err());
}
