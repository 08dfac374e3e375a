//! Unit-testing policies with `cargo test`, off the host.
//!
//! Inside wasmvisor, the [`host`](crate::host) functions are imports of
//! the component. On every other target they act on a [`FakeHost`]
//! installed on the current thread, so a policy's logic, host calls
//! included, runs natively: guest memory, registers, mappings and the
//! guest kernel's profile ([`KernelProfile`]) come from the test, and every console write, log line, event, protection,
//! breakpoint, interrupt line, constant answer and snapshot request
//! ([`SnapshotCall`]) is recorded. The fake
//! follows the host's rules: grants, the 64 KiB transfer limit, the
//! `host-error` each failure returns. Calling a `host` function with no
//! fake installed panics, saying so. None of this exists in a `wasm32`
//! build, where `host` is the generated imports and nothing else.
//!
//! [`Harness`] runs one policy instance the way the host does: `init`
//! with a config, then exits with increasing `seq`, each with its fake
//! installed. [`exit`] builds the exits.
//!
//! ```
//! use wasmvisor_policy_sdk::testing::{exit, Harness};
//! use wasmvisor_policy_sdk::{host, Config, Direction, Exit, IoExit, Policy, Subscriptions,
//!                            Verdict};
//!
//! /// Port 0x510 reads the guest-physical dword whose address was written
//! /// to it, and reports every address.
//! struct Peek {
//!     addr: u64,
//! }
//!
//! impl Policy for Peek {
//!     const NAME: &'static str = "peek";
//!     const VERSION: &'static str = "0.1.0";
//!     const DESCRIPTION: &'static str = "reads guest memory for the guest";
//!
//!     fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
//!         config.check_keys(&[])?;
//!         Ok((Peek { addr: 0 }, Subscriptions::new().port(0x510)))
//!     }
//!
//!     fn on_io(&mut self, _ev: &Exit, io: IoExit) -> Verdict {
//!         if io.direction == Direction::Write {
//!             self.addr = io.data.into();
//!             // Addresses go into events as "0x…" strings (docs/events.md).
//!             host::emit("peek", &format!("{{\"addr\":\"{:#x}\"}}", self.addr));
//!             return Verdict::resume();
//!         }
//!         match host::read_phys(self.addr, 4) {
//!             Ok(b) => Verdict::complete(u32::from_le_bytes([b[0], b[1], b[2], b[3]]).into()),
//!             Err(e) => {
//!                 host::warn(&format!("peek {:#x}: {}", self.addr, e.name()));
//!                 Verdict::complete(0xffff_ffff)
//!             }
//!         }
//!     }
//! }
//!
//! let mut h = Harness::<Peek>::new(&[]).unwrap();
//! h.host().map_phys(0x1000, &0xcafe_f00d_u32.to_le_bytes());
//!
//! h.exit(exit::io_write(0x510, 4, 0x1000));
//! assert_eq!(h.exit(exit::io_read(0x510, 4)), Verdict::complete(0xcafe_f00d));
//! h.exit(exit::io_write(0x510, 4, 0x2000)); // not RAM
//! assert_eq!(h.exit(exit::io_read(0x510, 4)), Verdict::complete(0xffff_ffff));
//!
//! assert_eq!(h.host().events_of("peek"), [r#"{"addr":"0x1000"}"#, r#"{"addr":"0x2000"}"#]);
//! assert_eq!(h.host().logs()[0].msg, "peek 0x2000: out-of-range");
//! assert_eq!(h.next_seq(), 4);
//! ```
//!
//! Code that calls `host` outside a policy method, such as a helper under
//! test, runs with a fake installed by [`FakeHost::run`] or
//! [`FakeHost::install`]:
//!
//! ```
//! use wasmvisor_policy_sdk::testing::FakeHost;
//! use wasmvisor_policy_sdk::{host, HostError};
//!
//! let fake = FakeHost::new();
//! fake.map_ram(0x10_0000, 0x1000).map_virt(0xffff_8000_0000_0000, 0x10_0000, 0x1000);
//! fake.run(|| {
//!     assert_eq!(host::translate(0xffff_8000_0000_0010), Ok(0x10_0010));
//!     assert_eq!(host::translate(0x10), Err(HostError::NotMapped));
//!     // Writing needs the write-memory grant, as on the host.
//!     assert_eq!(host::write_phys(0x10_0000, &[1]), Err(HostError::NotGranted));
//! });
//! ```

pub mod exit;
mod fake;
mod harness;
pub(crate) mod imports;
mod installed;
mod kernel;
mod memory;
mod recording;

pub use fake::FakeHost;
pub use harness::Harness;
pub use installed::Installed;
pub use kernel::KernelProfile;
pub use recording::{Constant, Event, LogLine, SnapshotCall};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        host, Breakpoint, BreakpointKind, Capabilities, Config, Exit, GpaRange, HostError, IoExit,
        LogLevel, MsrRange, Policy, PortRange, ProtectRequest, Protection, Reg, Segment,
        SegmentReg, Subscriptions, Verdict,
    };

    #[test]
    #[should_panic(expected = "host::read_phys called with no fake host installed")]
    fn a_host_call_without_a_fake_panics() {
        let _ = host::read_phys(0, 4);
    }

    #[test]
    fn guards_nest_and_uninstall() {
        let (a, b) = (FakeHost::new(), FakeHost::new().for_vcpu(3));
        let outer = a.install();
        assert_eq!(host::vcpu_id(), 0);
        b.run(|| assert_eq!((host::vcpu_id(), host::vcpu_count()), (3, 4)));
        assert_eq!(host::vcpu_id(), 0);
        drop(outer);
        let gone = std::panic::catch_unwind(host::vcpu_id);
        assert!(gone.is_err());
    }

    #[test]
    fn physical_memory_and_its_limits() {
        let fake = FakeHost::new();
        fake.map_phys(0x1000, &[1, 2, 3, 4]);
        fake.run(|| {
            assert_eq!(host::read_phys(0x1001, 2), Ok(vec![2, 3]));
            assert_eq!(host::read_phys(0x1002, 4), Err(HostError::OutOfRange));
            assert_eq!(host::read_phys(0x0fff, 1), Err(HostError::OutOfRange));
            assert_eq!(host::read_phys(0x9999, 0), Ok(vec![]));
            assert_eq!(host::read_phys(0x1000, 0x1_0001), Err(HostError::TooLarge));
            assert_eq!(host::write_phys(0x1000, &[9]), Err(HostError::NotGranted));
        });
        fake.grant(Capabilities::WRITE_MEMORY);
        fake.run(|| {
            assert_eq!(host::write_phys(0x1003, &[9]), Ok(()));
            assert_eq!(
                host::write_phys(0x1003, &[9, 9]),
                Err(HostError::OutOfRange)
            );
        });
        assert_eq!(fake.phys(0x1000, 4), Some(vec![1, 2, 3, 9]));
        assert_eq!(fake.phys(0x1000, 5), None);
    }

    #[test]
    fn virtual_memory_through_the_mappings() {
        let fake = FakeHost::new();
        fake.map_ram(0x8000, 0x2000)
            .map_virt(0x40_0000, 0x9000, 0x1000)
            .map_virt(0x40_1000, 0x8000, 0x1000)
            .map_virt(0x50_0000, 0xf000, 0x1000)
            .put_virt(0x40_0ffe, b"abcd");
        assert_eq!(fake.phys(0x9ffe, 2).unwrap(), b"ab");
        assert_eq!(fake.phys(0x8000, 2).unwrap(), b"cd");
        fake.run(|| {
            assert_eq!(host::translate(0x40_1234), Ok(0x8234));
            assert_eq!(host::translate(0x50_0001), Ok(0xf001));
            assert_eq!(host::translate(0x60_0000), Err(HostError::NotMapped));
            assert_eq!(host::read_virt(0x40_0ffe, 4), Ok(b"abcd".to_vec()));
            assert_eq!(host::read_virt(0x40_1ffe, 4), Err(HostError::NotMapped));
            // Mapped, but not onto RAM.
            assert_eq!(host::read_virt(0x50_0000, 1), Err(HostError::OutOfRange));
            assert_eq!(
                host::write_virt(0x40_0000, b"x"),
                Err(HostError::NotGranted)
            );
        });
        fake.grant(Capabilities::WRITE_MEMORY);
        fake.run(|| assert_eq!(host::write_virt(0x40_1000, b"CD"), Ok(())));
        assert_eq!(fake.phys(0x8000, 2).unwrap(), b"CD");
    }

    #[test]
    fn registers_and_segments() {
        let fake = FakeHost::new();
        let gs = Segment {
            selector: 0x18,
            base: 0xffff_8000_0000_1000,
            limit: 0xffff_ffff,
            attributes: 0xa093,
            unusable: false,
        };
        fake.set_reg(Reg::Cr3, 0x1000)
            .set_segment(SegmentReg::Gs, gs);
        fake.run(|| {
            assert_eq!(
                (host::get_reg(Reg::Cr3), host::get_reg(Reg::Rax)),
                (0x1000, 0)
            );
            assert_eq!(host::get_segment(SegmentReg::Gs), gs);
            assert_eq!(host::get_segment(SegmentReg::Fs).base, 0);
            assert_eq!(
                host::set_segment(SegmentReg::Fs, gs),
                Err(HostError::NotGranted)
            );
        });
        fake.grant(Capabilities::SET_REGISTERS);
        fake.run(|| assert_eq!(host::set_segment(SegmentReg::Fs, gs), Ok(())));
        assert_eq!(fake.segment(SegmentReg::Fs), gs);
    }

    #[test]
    fn counters_are_shared_by_the_vcpus_of_a_vm() {
        let cpu0 = FakeHost::new();
        let cpu1 = cpu0.for_vcpu(1);
        assert_eq!(cpu0.run(|| host::counter_add("hits", 2)), 2);
        assert_eq!(cpu1.run(|| host::counter_add("hits", 3)), 5);
        assert_eq!(cpu1.run(|| host::counter_add("other", i64::MIN)), i64::MIN);
        assert_eq!(cpu0.run(|| host::counter_add("other", -1)), i64::MIN);
        assert_eq!(cpu0.counter("hits"), Some(5));
        assert_eq!(cpu0.counter("none"), None);
        assert_eq!(
            cpu1.counters(),
            [("hits".to_string(), 5), ("other".to_string(), i64::MIN)]
        );
        // A fresh VM has its own counters.
        assert_eq!(FakeHost::new().run(|| host::counter_add("hits", 1)), 1);
    }

    #[test]
    fn output_is_recorded_with_its_vcpu() {
        let cpu0 = FakeHost::new();
        let cpu1 = cpu0.for_vcpu(1);
        cpu0.run(|| {
            host::console_write(b"hello ");
            host::emit("boot", r#"{"stage":1}"#);
            host::info("up");
        });
        cpu1.run(|| {
            host::console_write(b"world\n");
            host::emit("boot", r#"{"stage":2}"#);
            host::emit("other", "{}");
            host::error("down");
        });
        assert_eq!(cpu0.console_text(), "hello world\n");
        assert_eq!(cpu0.events_of("boot"), [r#"{"stage":1}"#, r#"{"stage":2}"#]);
        let events = cpu1.events();
        assert_eq!((events[2].vcpu, events[2].kind.as_str()), (1, "other"));
        let logs = cpu0.take_logs();
        assert_eq!(
            logs,
            [
                LogLine {
                    vcpu: 0,
                    level: LogLevel::Info,
                    msg: "up".into()
                },
                LogLine {
                    vcpu: 1,
                    level: LogLevel::Error,
                    msg: "down".into()
                }
            ]
        );
        assert!(cpu0.logs().is_empty());
        assert_eq!(cpu0.take_events().len(), 3);
        assert!(cpu1.events().is_empty());
    }

    #[test]
    #[should_panic(expected = "exceeds the 256-byte limit")]
    fn an_oversized_event_kind_traps() {
        FakeHost::new().run(|| host::emit(&"k".repeat(257), "{}"));
    }

    #[test]
    fn protection_needs_the_grant_whole_pages_and_ram() {
        let fake = FakeHost::new();
        fake.map_ram(0, 0x10_0000);
        let req = |base, len, mode| ProtectRequest {
            range: GpaRange { base, len },
            mode,
        };
        let wp = req(0x7000, 0x2000, Protection::WriteProtect);
        fake.run(|| assert_eq!(host::protect(wp), Err(HostError::NotGranted)));
        fake.grant(Capabilities::PROTECT_MEMORY);
        fake.run(|| {
            assert_eq!(host::protect(wp), Ok(()));
            let ne = req(0x7000, 0x1000, Protection::NoExecute);
            assert_eq!(host::protect(ne), Err(HostError::Unsupported));
            let odd = req(0x7800, 0x1000, Protection::NoAccess);
            assert_eq!(host::protect(odd), Err(HostError::OutOfRange));
            let outside = req(0xff000, 0x2000, Protection::NoAccess);
            assert_eq!(host::protect(outside), Err(HostError::OutOfRange));
            assert_eq!(
                host::unprotect(GpaRange {
                    base: 0x8000,
                    len: 0x1000
                }),
                Ok(())
            );
            assert_eq!(
                host::unprotect(GpaRange { base: 0, len: 0 }),
                Err(HostError::OutOfRange)
            );
        });
        assert_eq!(fake.protect_calls(), [wp]);
        assert_eq!(
            fake.unprotect_calls(),
            [GpaRange {
                base: 0x8000,
                len: 0x1000
            }]
        );
    }

    #[test]
    fn breakpoints_use_four_slots_per_vcpu() {
        let fake = FakeHost::new();
        let bp = |kind, gva, len| Breakpoint { kind, gva, len };
        let exec = bp(BreakpointKind::Execute, 0x1001, 4);
        fake.run(|| {
            assert_eq!(host::set_breakpoint(exec), Err(HostError::NotGranted));
            assert_eq!(host::single_step(true), Err(HostError::NotGranted));
        });
        fake.grant(Capabilities::DEBUG);
        fake.run(|| {
            // An execute breakpoint has length 1 whatever was asked.
            assert_eq!(host::set_breakpoint(exec), Ok(0));
            assert_eq!(host::set_breakpoint(exec), Ok(0));
            let sw = bp(BreakpointKind::Software, 0x1000, 1);
            assert_eq!(host::set_breakpoint(sw), Err(HostError::Unsupported));
            let odd = bp(BreakpointKind::Write, 0x1002, 4);
            assert_eq!(host::set_breakpoint(odd), Err(HostError::OutOfRange));
            let three = bp(BreakpointKind::Write, 0x1002, 3);
            assert_eq!(host::set_breakpoint(three), Err(HostError::OutOfRange));
            for (i, gva) in [0x2000, 0x3000, 0x4000].into_iter().enumerate() {
                let w = bp(BreakpointKind::ReadWrite, gva, 8);
                assert_eq!(host::set_breakpoint(w), Ok(i as u8 + 1));
            }
            let full = bp(BreakpointKind::Write, 0x5000, 1);
            assert_eq!(host::set_breakpoint(full), Err(HostError::TooLarge));
            assert_eq!(host::clear_breakpoint(4), Err(HostError::OutOfRange));
            assert_eq!(host::clear_breakpoint(2), Ok(()));
            assert_eq!(host::set_breakpoint(full), Ok(2));
            assert_eq!(host::single_step(true), Ok(()));
        });
        let slots = fake.breakpoints();
        assert_eq!(slots[0], Some(Breakpoint { len: 1, ..exec }));
        assert_eq!(slots[2].map(|b| b.gva), Some(0x5000));
        assert!(fake.single_stepping());
        // Debug state is per vCPU.
        assert_eq!(fake.for_vcpu(1).breakpoints(), [None; 4]);
    }

    #[test]
    fn irq_lines_need_a_grant_and_a_controller() {
        let fake = FakeHost::new();
        fake.grant_irq(4);
        fake.run(|| {
            assert_eq!(host::set_irq_line(4, true), Ok(()));
            assert_eq!(host::set_irq_line(3, true), Err(HostError::NotGranted));
        });
        fake.set_irqchip(false);
        fake.run(|| assert_eq!(host::set_irq_line(4, false), Err(HostError::Unsupported)));
        assert_eq!(fake.irq_calls(), [(4, true)]);
    }

    #[test]
    fn kernel_profile_answers_or_is_unsupported() {
        let fake = FakeHost::new();
        fake.run(|| {
            assert_eq!(host::kernel_symbol("x"), Err(HostError::Unsupported));
            assert_eq!(host::kernel_symbolize(0), Err(HostError::Unsupported));
            assert_eq!(host::kernel_type_size("x"), Err(HostError::Unsupported));
            assert_eq!(
                host::kernel_member_offset("x.y"),
                Err(HostError::Unsupported)
            );
        });
        let profile = KernelProfile::new()
            .symbol("_stext", 0xffff_ffff_8100_0000)
            .symbol("b_alias", 0xffff_ffff_8100_1000)
            .symbol("a_func", 0xffff_ffff_8100_1000)
            .symbol("init_task", 0xffff_ffff_8260_0000)
            .type_size("task_struct", 0x2700)
            .member("task_struct.tasks", 0x890)
            .member("task_struct.tasks", 0x898);
        fake.set_kernel_profile(profile);
        // Another vCPU of the VM sees the same kernel.
        fake.for_vcpu(1).run(|| {
            assert_eq!(
                host::kernel_symbol("_stext"),
                Ok(Some(0xffff_ffff_8100_0000))
            );
            assert_eq!(host::kernel_symbol("_etext"), Ok(None));
            let at = |addr| host::kernel_symbolize(addr).unwrap();
            assert_eq!(at(0xffff_ffff_80ff_ffff), None);
            assert_eq!(at(0xffff_ffff_8100_0000), Some(("_stext".into(), 0)));
            assert_eq!(at(0xffff_ffff_8100_0fff), Some(("_stext".into(), 0xfff)));
            // Of two symbols at one address, the first by name.
            assert_eq!(at(0xffff_ffff_8100_1008), Some(("a_func".into(), 8)));
            assert_eq!(at(u64::MAX), Some(("init_task".into(), 0x7d9f_ffff)));
            assert_eq!(host::kernel_type_size("task_struct"), Ok(Some(0x2700)));
            assert_eq!(host::kernel_type_size("mm_struct"), Ok(None));
            // The latest offset given wins.
            assert_eq!(
                host::kernel_member_offset("task_struct.tasks"),
                Ok(Some(0x898))
            );
            assert_eq!(host::kernel_member_offset("task_struct.pid"), Ok(None));
        });
        fake.clear_kernel_profile();
        fake.run(|| assert_eq!(host::kernel_symbol("_stext"), Err(HostError::Unsupported)));
    }

    #[test]
    fn snapshots_need_the_grant_support_and_a_baseline() {
        let fake = FakeHost::new();
        fake.run(|| {
            assert_eq!(host::snapshot_baseline(), Err(HostError::NotGranted));
            assert_eq!(host::snapshot_reset(), Err(HostError::NotGranted));
        });
        fake.grant_snapshot();
        fake.run(|| {
            assert_eq!(host::snapshot_reset(), Err(HostError::Unsupported));
            assert_eq!(host::snapshot_baseline(), Ok(()));
        });
        // Another vCPU of the VM resets to the same baseline.
        fake.for_vcpu(1).run(|| {
            assert_eq!(host::snapshot_reset(), Ok(()));
            assert_eq!(host::snapshot_reset(), Ok(()));
        });
        assert_eq!(
            fake.snapshot_calls(),
            [
                SnapshotCall::Baseline,
                SnapshotCall::Reset,
                SnapshotCall::Reset
            ]
        );
        assert_eq!((fake.baselines(), fake.resets()), (1, 2));
        assert_eq!(fake.take_snapshot_calls().len(), 3);
        // The baseline stays taken once the calls are forgotten.
        fake.run(|| assert_eq!(host::snapshot_reset(), Ok(())));
        fake.set_snapshot_supported(false);
        fake.run(|| assert_eq!(host::snapshot_reset(), Err(HostError::Unsupported)));
        fake.revoke_snapshot();
        fake.run(|| assert_eq!(host::snapshot_baseline(), Err(HostError::NotGranted)));
        assert_eq!(fake.snapshot_calls(), [SnapshotCall::Reset]);
    }

    /// A policy that exercises the harness: it declares constant answers
    /// in `init`, tries again on each I/O exit, reports each HLT's
    /// identity, and asks for two capabilities.
    struct Probe;

    impl Policy for Probe {
        const NAME: &'static str = "probe";
        const VERSION: &'static str = "0";
        const DESCRIPTION: &'static str = "";

        fn init(_: &Config) -> Result<(Self, Subscriptions), String> {
            let ports = PortRange {
                first: 0x60,
                last: 0x64,
            };
            host::constant_ports(ports, 0x1c).map_err(|e| e.name().to_string())?;
            let msrs = MsrRange { first: 1, last: 1 };
            host::constant_msrs(msrs, 7).map_err(|e| e.name().to_string())?;
            let mmio = GpaRange { base: 0, len: 4 };
            host::constant_mmio(mmio, 0).map_err(|e| e.name().to_string())?;
            let caps = Capabilities::DEBUG | Capabilities::WRITE_MEMORY;
            let subscriptions = Subscriptions::new().ports(0x60, 0x64).capabilities(caps);
            Ok((Probe, subscriptions))
        }

        fn on_io(&mut self, _ev: &Exit, io: IoExit) -> Verdict {
            let ports = PortRange {
                first: io.port,
                last: io.port,
            };
            match host::constant_ports(ports, 0) {
                Err(e) => {
                    host::emit("refused", e.name());
                    Verdict::resume()
                }
                Ok(()) => Verdict::decline(),
            }
        }

        fn on_hlt(&mut self, ev: &Exit) -> Verdict {
            let json = crate::json::Object::new()
                .u64("vcpu", ev.vcpu.into())
                .u64("seq", ev.seq)
                .u64("rip", ev.rip)
                .finish();
            host::emit("exit", &json);
            Verdict::resume()
        }
    }

    #[test]
    fn constants_are_declared_during_init_only() {
        let mut h = Harness::<Probe>::new(&[]).unwrap();
        let constants = h.host().constants();
        assert_eq!(constants.len(), 3);
        assert_eq!(
            constants[0],
            Constant::Ports(
                PortRange {
                    first: 0x60,
                    last: 0x64
                },
                0x1c
            )
        );
        assert_eq!(h.exit(exit::io_read(0x60, 1)), Verdict::resume());
        assert_eq!(h.host().events_of("refused"), ["unsupported"]);
        // Outside the harness there is no `init` phase either.
        let err = FakeHost::new().run(|| Probe::init(&Config::default()).err());
        assert_eq!(err.as_deref(), Some("unsupported"));
    }

    #[test]
    fn harness_numbers_exits_and_reports_rip() {
        let host = FakeHost::new().for_vcpu(2);
        let mut h = Harness::<Probe>::with_host(host, &[]).unwrap();
        h.exit(exit::hlt());
        h.exit_at(0x1234, exit::hlt());
        h.exit(exit::hlt());
        assert_eq!(
            h.host().events_of("exit"),
            [
                r#"{"vcpu":2,"seq":0,"rip":0}"#,
                r#"{"vcpu":2,"seq":1,"rip":4660}"#,
                r#"{"vcpu":2,"seq":2,"rip":4660}"#
            ]
        );
        assert_eq!(h.next_seq(), 3);
        assert!(format!("{h:?}").contains("probe"));
    }

    #[test]
    fn harness_grants_what_the_policy_asks() {
        let h = Harness::<Probe>::new(&[]).unwrap();
        assert_eq!(
            h.host().grants(),
            Capabilities::DEBUG | Capabilities::WRITE_MEMORY
        );
        let h = Harness::<Probe>::with_host(FakeHost::new(), &[]).unwrap();
        assert!(h.host().grants().is_empty());
    }
}
