//! Records every port I/O exit it sees as an `io` event and passes the exit
//! on. List it before the policies it observes, or run it as an observer
//! (`@observe`), off the vCPU's path (`docs/adr/0008-observers.md`).
//!
//! Per exit it adds to the `io` counter through a handle resolved at
//! `init` (no key hashing or lock), and formats the event only when the
//! host writes events (`events-enabled`).

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::json::Object;
use wasmvisor_policy_sdk::{
    export_policy, host, Config, Direction, Exit, IoExit, LogLevel, Policy, PortRange,
    Subscriptions, Verdict,
};

#[derive(Debug)]
struct IoTracer {
    ports: Vec<PortRange>,
    log: bool,
    /// The `io` counter's handle.
    io: u32,
    /// The host writes events (`--events`).
    events: bool,
}

fn dir(io: &IoExit) -> &'static str {
    match io.direction {
        Direction::Read => "in",
        Direction::Write => "out",
    }
}

/// The `io` event for one exit: `rip` and `data` as `"0x…"` strings.
fn event_json(ev: &Exit, io: &IoExit) -> String {
    Object::new()
        .u64("seq", ev.seq)
        .u64("vcpu", ev.vcpu.into())
        .hex("rip", ev.rip)
        .u64("port", io.port.into())
        .str("dir", dir(io))
        .u64("size", io.size.into())
        .hex("data", io.data.into())
        .finish()
}

/// The log line for one exit.
fn log_line(ev: &Exit, io: &IoExit) -> String {
    let data = match io.direction {
        Direction::Read => String::new(),
        Direction::Write => format!(" data {:#x}", io.data),
    };
    format!(
        "io-tracer: #{} vcpu {} rip {:#x}: {} {:#x} size {}{data}",
        ev.seq,
        ev.vcpu,
        ev.rip,
        dir(io),
        io.port,
        io.size
    )
}

impl Policy for IoTracer {
    const NAME: &'static str = "io-tracer";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "records port I/O exits as events and passes them on";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&["ports", "log"])?;
        let mut ports = config.port_ranges("ports")?;
        if ports.is_empty() {
            ports.push(PortRange {
                first: 0,
                last: 0xffff,
            });
        }
        let log = config.bool("log")?.unwrap_or(false);
        let subscriptions = Subscriptions::new().port_ranges(ports.iter().copied());
        let tracer = IoTracer {
            ports,
            log,
            io: host::counter_handle("io"),
            events: host::events_enabled(),
        };
        Ok((tracer, subscriptions))
    }

    fn on_io(&mut self, ev: &Exit, io: IoExit) -> Verdict {
        if self
            .ports
            .iter()
            .any(|r| (r.first..=r.last).contains(&io.port))
        {
            if self.events {
                host::emit("io", &event_json(ev, &io));
            }
            host::counter_add_handle(self.io, 1);
            if self.log {
                host::log(LogLevel::Info, &log_line(ev, &io));
            }
        }
        Verdict::Decline
    }
}

export_policy!(IoTracer);

#[cfg(test)]
mod tests {
    use super::*;

    const EV: Exit = Exit {
        vcpu: 1,
        seq: 42,
        rip: 0x1000,
    };

    fn out(port: u16, data: u32) -> IoExit {
        IoExit {
            port,
            size: 1,
            direction: Direction::Write,
            data,
        }
    }

    #[test]
    fn json_and_log() {
        assert_eq!(
            event_json(&EV, &out(0x3f8, 0x41)),
            r#"{"seq":42,"vcpu":1,"rip":"0x1000","port":1016,"dir":"out","size":1,"data":"0x41"}"#
        );
        let read = IoExit {
            direction: Direction::Read,
            data: 0,
            size: 2,
            ..out(0x60, 0)
        };
        assert!(event_json(&EV, &read).contains(r#""dir":"in","size":2,"data":"0x0""#));
        assert_eq!(
            log_line(&EV, &out(0x3f8, 0x41)),
            "io-tracer: #42 vcpu 1 rip 0x1000: out 0x3f8 size 1 data 0x41"
        );
        assert_eq!(
            log_line(&EV, &read),
            "io-tracer: #42 vcpu 1 rip 0x1000: in 0x60 size 2"
        );
    }

    use wasmvisor_policy_sdk::testing::FakeHost;

    #[test]
    fn config() {
        FakeHost::new().run(|| {
            let (t, s) = IoTracer::init(&Config::default()).unwrap();
            assert!(!t.log);
            assert_eq!((s.ports[0].first, s.ports[0].last), (0, 0xffff));
            let c =
                Config::from_pairs([("ports", "0x3f8-0x3ff"), ("ports", "0x80"), ("log", "true")]);
            let (t, s) = IoTracer::init(&c).unwrap();
            assert!(t.log);
            assert_eq!(s.ports.len(), 2);
            assert!(IoTracer::init(&Config::from_pairs([("log", "maybe")])).is_err());
            assert!(IoTracer::init(&Config::from_pairs([("port", "1")])).is_err());
        });
    }

    #[test]
    fn foreign_port_declines_silently() {
        let fake = FakeHost::new();
        fake.run(|| {
            let c = Config::from_pairs([("ports", "0x80")]);
            let (mut t, _) = IoTracer::init(&c).unwrap();
            assert!(t.on_io(&EV, out(0x81, 0)).is_decline());
        });
        assert!(fake.events().is_empty());
        assert_eq!(fake.counter("io"), Some(0));
    }

    #[test]
    fn without_an_events_file_it_counts_but_formats_nothing() {
        for events in [true, false] {
            let fake = FakeHost::new();
            if !events {
                fake.disable_events();
            }
            fake.run(|| {
                let (mut t, _) = IoTracer::init(&Config::default()).unwrap();
                for _ in 0..3 {
                    assert!(t.on_io(&EV, out(0x3f8, 0x41)).is_decline());
                }
            });
            assert_eq!(fake.counter("io"), Some(3), "counted through the handle");
            assert_eq!(fake.events_of("io").len(), if events { 3 } else { 0 });
        }
    }
}
