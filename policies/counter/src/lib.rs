//! Counts the sequence numbers the ticker guest (`examples/guests/ticker.S`)
//! sends on each vCPU, and carries the count from one generation of the
//! policy to the next: the worked example of state handoff across a hot
//! swap.
//!
//! # Protocol
//!
//! One instance serves one vCPU (the host makes one per vCPU), so all
//! state below is per vCPU. With `port` = P (0x500 by default):
//!
//! * **OUT dword to P** with `(vcpu << 24) | (seq & 0xffffff)`: the guest's
//!   next number. It is accepted when the top byte is the exiting vCPU's
//!   index and the low 24 bits equal the low 24 bits of `count`; then
//!   `count` goes up by one. Anything else is a `mismatch`: the policy
//!   stops the VM dirty.
//! * **IN from P**: answers `count` as a 32-bit value (cut to the access
//!   size). The guest checks it is one more than the number it just sent.
//! * **OUT to P+1**: the guest read a wrong count and reports it; the
//!   policy emits `guest-mismatch` and stops the VM dirty.
//!
//! Reads of P+1 are declined. Every stop needs the `stop-vm` grant, so the
//! policy asks for it and the operator must give it (`@grant=stop-vm`).
//!
//! # State across a hot swap
//!
//! `count` is the one value that must survive a swap: it is the number of
//! sequence numbers accepted on this vCPU over all generations, and the
//! guest checks it after every number. [`save_state`](Policy::save_state)
//! hands it on as 8 little-endian bytes; the next generation's
//! [`restore_state`](Policy::restore_state) takes it. An empty state (a
//! first load, nothing to restore) keeps the count at 0; any other length
//! is refused, so a swap from an incompatible policy fails instead of
//! starting from a wrong count. If the count is lost, the ticker reads a
//! wrong value at its next IN and reports it on P+1; if it is restored
//! twice or stale, the next OUT no longer matches. Either way the run ends
//! with a stop that names the generation.
//!
//! Everything else is per generation: `first` (the first number accepted
//! in this generation, as a full 64-bit count), `last` (the last one) and
//! `handled` (how many). `save_state` reports them in a `generation`
//! event before handing the count on, so the events of consecutive
//! generations show that no number was lost or accepted twice: the next
//! generation's `first` is the previous one's `last + 1`, and within one
//! generation `last - first + 1 == handled`.
//!
//! # Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `port` | `0x500` | P; the policy subscribes P and P+1 |
//! | `generation` | `0` | a label for this load, copied into every event |
//! | `stop` | `false` | stop the VM cleanly right after accepting the next number (ends a test run at a known point) |
//!
//! # Events
//!
//! ```text
//! generation      {"generation":G,"vcpu":V,"first":F|null,"last":L,"handled":H,"count":C}
//! mismatch        {"generation":G,"vcpu":V,"expected":E,"got":X}
//! guest-mismatch  {"generation":G,"vcpu":V,"got":X}
//! ```
//!
//! `generation` is emitted by `save_state`, and also when `stop=true`
//! ends the run. `first` is `null` (and `last` 0) when the generation
//! accepted nothing. In `mismatch`, `expected` is the whole dword the
//! policy wanted and `got` the one written; in `guest-mismatch`, `got` is
//! the count the guest reports having read.

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::json::Object;
use wasmvisor_policy_sdk::{
    export_policy, host, Capabilities, Config, Direction, Exit, IoExit, Policy, Subscriptions,
    Verdict,
};

/// The port when none is configured.
const DEFAULT_PORT: u16 = 0x500;
/// The bits of a number that carry the sequence; the top byte is the vCPU.
const SEQ_MASK: u64 = 0x00ff_ffff;
/// Where the vCPU index sits in a number.
const VCPU_SHIFT: u32 = 24;

/// The host calls the counter makes, behind a trait so that the logic
/// runs in unit tests off the host.
trait Host {
    fn emit(&mut self, kind: &str, json: &str);
}

/// The real host.
struct Live;

impl Host for Live {
    fn emit(&mut self, kind: &str, json: &str) {
        host::emit(kind, json);
    }
}

#[derive(Debug)]
struct Counter {
    port: u16,
    generation: u64,
    /// Stop cleanly after accepting the next number.
    stop: bool,
    /// The vCPU this instance serves. `save_state` runs outside any exit,
    /// so it cannot take the index from one.
    vcpu: u32,
    /// Numbers accepted on this vCPU over every generation: the state
    /// handed across a swap.
    count: u64,
    /// The first number (a value of `count`) accepted in this generation.
    first: Option<u64>,
    /// The last number accepted in this generation.
    last: u64,
    /// Numbers accepted in this generation.
    handled: u64,
}

impl Counter {
    fn from_config(config: &Config, vcpu: u32) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&["port", "generation", "stop"])?;
        let port = config.u16("port")?.unwrap_or(DEFAULT_PORT);
        let Some(report_port) = port.checked_add(1) else {
            return Err(format!(
                "config key `port`: {port:#x} leaves no room for the report port"
            ));
        };
        let generation = config.u64_or("generation", 0)?;
        let stop = config.bool("stop")?.unwrap_or(false);
        let counter = Counter {
            port,
            generation,
            stop,
            vcpu,
            count: 0,
            first: None,
            last: 0,
            handled: 0,
        };
        let subscriptions = Subscriptions::new()
            .ports(port, report_port)
            .capabilities(Capabilities::STOP_VM);
        Ok((counter, subscriptions))
    }

    /// The `generation` event.
    fn summary(&self) -> String {
        let first = self.first.map_or_else(|| "null".into(), |f| f.to_string());
        Object::new()
            .u64("generation", self.generation)
            .u64("vcpu", u64::from(self.vcpu))
            .raw("first", &first)
            .u64("last", self.last)
            .u64("handled", self.handled)
            .u64("count", self.count)
            .finish()
    }

    /// The guest's next number arrived on the tick port.
    fn tick(&mut self, h: &mut dyn Host, vcpu: u32, got: u32) -> Verdict {
        // Compared in 64 bits so that an index too large for the top byte
        // can never match.
        let expected = (u64::from(vcpu) << VCPU_SHIFT) | (self.count & SEQ_MASK);
        if u64::from(got) != expected {
            let json = Object::new()
                .u64("generation", self.generation)
                .u64("vcpu", u64::from(vcpu))
                .u64("expected", expected)
                .u64("got", u64::from(got))
                .finish();
            h.emit("mismatch", &json);
            return Verdict::stop(
                false,
                format!(
                    "counter: generation {} vcpu {vcpu}: got {got:#x}, expected {expected:#x}",
                    self.generation
                ),
            );
        }
        let seq = self.count;
        self.count += 1;
        self.first.get_or_insert(seq);
        self.last = seq;
        self.handled += 1;
        if self.stop {
            h.emit("generation", &self.summary());
            return Verdict::stop(true, "counter: stop requested");
        }
        Verdict::resume()
    }

    /// The guest read a count it did not expect and reports it.
    fn guest_mismatch(&mut self, h: &mut dyn Host, vcpu: u32, got: u32) -> Verdict {
        let json = Object::new()
            .u64("generation", self.generation)
            .u64("vcpu", u64::from(vcpu))
            .u64("got", u64::from(got))
            .finish();
        h.emit("guest-mismatch", &json);
        Verdict::stop(
            false,
            format!(
                "counter: generation {} vcpu {vcpu}: guest read count {got}, policy has {}",
                self.generation, self.count
            ),
        )
    }

    fn io(&mut self, h: &mut dyn Host, ev: &Exit, io: &IoExit) -> Verdict {
        let report_port = self.port + 1;
        match (io.port, io.direction) {
            (p, Direction::Write) if p == self.port => self.tick(h, ev.vcpu, io.data),
            // The guest sees the count as a dword; wrapping with it keeps
            // its `count == seq + 1` check exact past 2^32.
            (p, Direction::Read) if p == self.port => {
                Verdict::complete_sized(u64::from(self.count as u32), io.size)
            }
            (p, Direction::Write) if p == report_port => self.guest_mismatch(h, ev.vcpu, io.data),
            _ => Verdict::Decline,
        }
    }

    fn save(&self, h: &mut dyn Host) -> Vec<u8> {
        h.emit("generation", &self.summary());
        self.count.to_le_bytes().to_vec()
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        match state.len() {
            0 => Ok(()),
            8 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(state);
                self.count = u64::from_le_bytes(bytes);
                Ok(())
            }
            n => Err(format!("counter: state must be 8 bytes, got {n}")),
        }
    }
}

impl Policy for Counter {
    const NAME: &'static str = "counter";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "counts the ticker guest's sequence numbers per vCPU and hands the count across hot swaps";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        Counter::from_config(config, host::vcpu_id())
    }

    fn on_io(&mut self, ev: &Exit, io: IoExit) -> Verdict {
        self.io(&mut Live, ev, &io)
    }

    fn save_state(&self) -> Vec<u8> {
        self.save(&mut Live)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        self.restore(state)
    }
}

export_policy!(Counter);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_policy_sdk::Action;

    #[derive(Default)]
    struct Fake {
        events: Vec<(String, String)>,
    }

    impl Host for Fake {
        fn emit(&mut self, kind: &str, json: &str) {
            self.events.push((kind.into(), json.into()));
        }
    }

    fn counter(pairs: &[(&str, &str)], vcpu: u32) -> Counter {
        Counter::from_config(&pairs.iter().copied().collect(), vcpu)
            .unwrap()
            .0
    }

    fn ev(vcpu: u32) -> Exit {
        Exit {
            vcpu,
            seq: 0,
            rip: 0x8019,
        }
    }

    fn out(port: u16, data: u32) -> IoExit {
        IoExit {
            port,
            size: 4,
            direction: Direction::Write,
            data,
        }
    }

    fn inp(port: u16, size: u8) -> IoExit {
        IoExit {
            port,
            size,
            direction: Direction::Read,
            data: 0,
        }
    }

    fn actions(v: Verdict) -> Vec<Action> {
        match v {
            Verdict::Decline => panic!("declined"),
            Verdict::Handled(a) => a,
        }
    }

    fn read(c: &mut Counter, h: &mut Fake, vcpu: u32) -> u64 {
        match actions(c.io(h, &ev(vcpu), &inp(c.port, 4)))[..] {
            [Action::CompleteRead(v)] => v,
            ref other => panic!("{other:?}"),
        }
    }

    /// The stop request of a verdict, as (clean, reason).
    fn stopped(v: Verdict) -> (bool, String) {
        match &actions(v)[..] {
            [Action::Stop(s)] => (s.clean, s.reason.clone()),
            other => panic!("{other:?}"),
        }
    }

    /// Sends `n` in-order numbers from `vcpu`, checking each answer.
    fn run(c: &mut Counter, h: &mut Fake, vcpu: u32, n: u64) {
        for _ in 0..n {
            let seq = c.count;
            let number = (vcpu << 24) | (seq as u32 & 0xff_ffff);
            let v = c.io(h, &ev(vcpu), &out(c.port, number));
            assert_eq!(v, Verdict::resume());
            assert_eq!(read(c, h, vcpu), seq + 1);
        }
    }

    #[test]
    fn config() {
        let (c, s) = Counter::from_config(&Config::default(), 3).unwrap();
        assert_eq!((c.port, c.generation, c.stop, c.vcpu), (0x500, 0, false, 3));
        assert_eq!((s.ports[0].first, s.ports[0].last), (0x500, 0x501));
        assert_eq!(s.capabilities, Capabilities::STOP_VM);

        let c = counter(&[("port", "0x600"), ("generation", "7"), ("stop", "1")], 0);
        assert_eq!((c.port, c.generation, c.stop), (0x600, 7, true));
        assert!(!counter(&[("stop", "false")], 0).stop);
        assert!(counter(&[("stop", "true")], 0).stop);

        let err = |pairs: &[(&str, &str)]| {
            Counter::from_config(&pairs.iter().copied().collect(), 0).unwrap_err()
        };
        assert_eq!(err(&[("ports", "1")]), "unknown config key `ports`");
        assert!(err(&[("port", "0x10000")]).contains("too large"));
        assert!(err(&[("port", "0xffff")]).contains("report port"));
        assert!(err(&[("stop", "maybe")]).contains("not true or false"));
        assert!(err(&[("generation", "x")]).contains("not a number"));
    }

    #[test]
    fn accepts_in_order_and_answers_the_count() {
        let mut h = Fake::default();
        let mut c = counter(&[], 2);
        assert_eq!(read(&mut c, &mut h, 2), 0);
        run(&mut c, &mut h, 2, 5);
        assert_eq!((c.count, c.first, c.last, c.handled), (5, Some(0), 4, 5));
        assert!(h.events.is_empty());

        // A narrower read gets the low bytes.
        c.count = 0x1_2345_6789;
        match actions(c.io(&mut h, &ev(2), &inp(0x500, 2)))[..] {
            [Action::CompleteRead(v)] => assert_eq!(v, 0x6789),
            ref other => panic!("{other:?}"),
        }
        // The dword read wraps with the guest's 32-bit sequence.
        assert_eq!(read(&mut c, &mut h, 2), 0x2345_6789);
    }

    #[test]
    fn sequence_wraps_at_24_bits() {
        let mut h = Fake::default();
        let mut c = counter(&[], 1);
        c.count = 0xff_ffff;
        run(&mut c, &mut h, 1, 2);
        assert_eq!(c.count, 0x100_0001);
        assert_eq!((c.first, c.last), (Some(0xff_ffff), 0x100_0000));
    }

    #[test]
    fn wrong_vcpu_or_seq_stops_dirty() {
        let mut h = Fake::default();
        let mut c = counter(&[("generation", "4")], 1);
        run(&mut c, &mut h, 1, 3);

        // Right sequence, wrong vCPU in the top byte.
        let (clean, reason) = stopped(c.io(&mut h, &ev(1), &out(0x500, (2 << 24) | 3)));
        assert!(!clean);
        assert!(reason.contains("generation 4 vcpu 1"), "{reason}");
        assert_eq!(
            h.events,
            [(
                "mismatch".to_string(),
                r#"{"generation":4,"vcpu":1,"expected":16777219,"got":33554435}"#.to_string()
            )]
        );

        // Right vCPU, a number repeated.
        let (clean, _) = stopped(c.io(&mut h, &ev(1), &out(0x500, (1 << 24) | 2)));
        assert!(!clean);
        assert_eq!(
            h.events[1].1,
            r#"{"generation":4,"vcpu":1,"expected":16777219,"got":16777218}"#
        );
        // Neither was accepted.
        assert_eq!((c.count, c.handled, c.last), (3, 3, 2));
    }

    #[test]
    fn guest_report_stops_dirty() {
        let mut h = Fake::default();
        let mut c = counter(&[("generation", "2")], 0);
        let (clean, reason) = stopped(c.io(&mut h, &ev(0), &out(0x501, 17)));
        assert!(!clean);
        assert!(reason.contains("guest read count 17"), "{reason}");
        assert_eq!(
            h.events,
            [(
                "guest-mismatch".to_string(),
                r#"{"generation":2,"vcpu":0,"got":17}"#.to_string()
            )]
        );
        // Not the counter's business: other ports and reads of the report port.
        assert!(c.io(&mut h, &ev(0), &inp(0x501, 4)).is_decline());
        assert!(c.io(&mut h, &ev(0), &out(0x502, 0)).is_decline());
    }

    #[test]
    fn state_round_trip_keeps_the_count() {
        let mut h = Fake::default();
        let mut old = counter(&[], 3);
        run(&mut old, &mut h, 3, 4);
        let state = old.save(&mut h);
        assert_eq!(state, 4u64.to_le_bytes());
        assert_eq!(
            h.events,
            [(
                "generation".to_string(),
                r#"{"generation":0,"vcpu":3,"first":0,"last":3,"handled":4,"count":4}"#.to_string()
            )]
        );

        // The next generation picks up where the old one stopped.
        let mut new = counter(&[("generation", "1")], 3);
        new.restore(&state).unwrap();
        assert_eq!(read(&mut new, &mut h, 3), 4);
        run(&mut new, &mut h, 3, 2);
        new.save(&mut h);
        assert_eq!(
            h.events[1].1,
            r#"{"generation":1,"vcpu":3,"first":4,"last":5,"handled":2,"count":6}"#
        );

        // A generation that accepted nothing has no first number.
        let mut idle = counter(&[("generation", "2")], 3);
        idle.restore(&6u64.to_le_bytes()).unwrap();
        assert_eq!(idle.save(&mut h), 6u64.to_le_bytes());
        assert_eq!(
            h.events[2].1,
            r#"{"generation":2,"vcpu":3,"first":null,"last":0,"handled":0,"count":6}"#
        );

        // Nothing to restore: a first load starts at 0.
        let mut fresh = counter(&[], 0);
        fresh.restore(&[]).unwrap();
        assert_eq!(fresh.count, 0);
    }

    #[test]
    fn bad_state_length_is_an_error() {
        let mut c = counter(&[], 0);
        assert_eq!(
            c.restore(&[1, 2, 3]),
            Err("counter: state must be 8 bytes, got 3".to_string())
        );
        assert_eq!(
            c.restore(&[0; 9]),
            Err("counter: state must be 8 bytes, got 9".to_string())
        );
        assert_eq!(c.count, 0);
    }

    #[test]
    fn stop_requested_stops_clean_after_accepting() {
        let mut h = Fake::default();
        let mut c = counter(&[("stop", "true"), ("generation", "9")], 0);
        c.restore(&10u64.to_le_bytes()).unwrap();
        let (clean, reason) = stopped(c.io(&mut h, &ev(0), &out(0x500, 10)));
        assert!(clean);
        assert_eq!(reason, "counter: stop requested");
        assert_eq!(c.count, 11);
        assert_eq!(
            h.events,
            [(
                "generation".to_string(),
                r#"{"generation":9,"vcpu":0,"first":10,"last":10,"handled":1,"count":11}"#
                    .to_string()
            )]
        );

        // A wrong number still stops dirty, without accepting it.
        let (clean, _) = stopped(c.io(&mut h, &ev(0), &out(0x500, 10)));
        assert!(!clean);
        assert_eq!(c.count, 11);
    }
}
