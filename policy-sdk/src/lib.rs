//! Write wasmvisor exit-handling policies in a few lines.
//!
//! A policy is a Wasm component of the `wasmvisor:policy/policy` world
//! (`wit/policy.wit`). This crate generates the bindings, so a policy crate
//! needs only this dependency: implement [`Policy`], call
//! [`export_policy!`], and build a `cdylib` for `wasm32-wasip2`.
//!
//! ```
//! use wasmvisor_policy_sdk::{export_policy, Config, Direction, Exit, IoExit, Policy,
//!                            Subscriptions, Verdict};
//!
//! /// A one-byte scratch register on a port.
//! struct Scratch {
//!     port: u16,
//!     value: u8,
//! }
//!
//! impl Policy for Scratch {
//!     const NAME: &'static str = "scratch";
//!     const VERSION: &'static str = "0.1.0";
//!     const DESCRIPTION: &'static str = "A one-byte scratch register";
//!
//!     fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
//!         config.check_keys(&["port"])?;
//!         let port = config.u16("port")?.unwrap_or(0x80);
//!         Ok((Scratch { port, value: 0 }, Subscriptions::new().port(port)))
//!     }
//!
//!     fn on_io(&mut self, _ev: &Exit, io: IoExit) -> Verdict {
//!         match io.direction {
//!             Direction::Write => {
//!                 self.value = io.data as u8;
//!                 Verdict::resume()
//!             }
//!             Direction::Read => Verdict::complete(self.value.into()),
//!         }
//!     }
//! }
//!
//! export_policy!(Scratch);
//! # fn main() {
//! #     let config = Config::from_pairs([("port", "0x99")]);
//! #     let (mut p, subs) = Scratch::init(&config).unwrap();
//! #     assert_eq!((subs.ports[0].first, subs.ports[0].last), (0x99, 0x99));
//! #     let ev = Exit { vcpu: 0, seq: 0, rip: 0 };
//! #     let io = IoExit { port: 0x99, size: 1, direction: Direction::Write, data: 5 };
//! #     assert!(!p.on_io(&ev, io).is_decline());
//! #     assert!(Scratch::init(&Config::from_pairs([("x", "1")])).is_err());
//! # }
//! ```
//!
//! Build it with
//! `cargo build --profile policy --target wasm32-wasip2 -p scratch-policy`.
//!
//! # How the pieces fit
//!
//! * The host creates one instance per (policy, vCPU) and calls `init` on
//!   each with the operator's `key=value` pairs, wrapped in a [`Config`].
//!   [`Policy::init`] returns the policy and its [`Subscriptions`]; an
//!   `Err` refuses to start the VM with that message.
//! * Every exit the policy subscribed to reaches one of the `on_*` methods.
//!   Each defaults to [`Verdict::Decline`] ("not mine"), which passes the
//!   exit to the next policy and finally to the host's default handler.
//! * [`Verdict::complete`] answers a read. The host rejects a value wider
//!   than the access (1, 2 or 4 bytes for I/O, 8 for an MSR), so mask it or
//!   use [`Verdict::complete_sized`].
//! * [`Policy::cpuid`] sees each CPUID table entry whose function the
//!   policy subscribed to with [`Subscriptions::cpuid`].
//! * [`host`] holds what a policy may call back: registers, guest memory,
//!   the console, logging, events and counters, and the guest kernel's
//!   profile (`kernel_symbol`, `kernel_symbolize`, `kernel_type_size`,
//!   `kernel_member_offset`: its symbols and type layouts, `unsupported`
//!   when the VM has none). Outside a `wasm32` build they act on a fake
//!   host the test installs, so policies are unit tested with
//!   `cargo test` (see `testing`).
//! * [`LineTrigger`] (module [`trigger`]) fires once, when the guest
//!   prints a line containing a given text on COM1, or at the first exit:
//!   the moment a policy that reads kernel state does its work.
//! * [`doorbell`] is the calling convention of guests that talk to their
//!   policy on port 0x0ad0 (HELLO, SNAPSHOT, GET_INPUT, DONE, CRASH, LOG):
//!   [`doorbell::Call::read`] decodes a call, [`doorbell::reply`] answers
//!   it in RAX and RBX. The snapshot imports (`host::snapshot_baseline`,
//!   `host::snapshot_reset`, grant `@grant=snapshot`) let such a policy
//!   run the guest again and again from one state, as `policies/fuzzer`
//!   does.
//! * [`Policy::save_state`] and [`Policy::restore_state`] carry state from
//!   one generation of a policy to the next on a hot swap.
//!
//! Exits that reach the component before `init` succeeded are declined,
//! CPUID entries pass unchanged, `save-state` returns nothing and
//! `restore-state` fails.

#![forbid(unsafe_code)]

mod config;
pub mod doorbell;
pub mod host;
pub mod json;
pub mod kernel;
pub mod linux_syscalls;
mod subscriptions;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod trigger;
mod verdict;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        // `policy` plus the list-free answer (`quick-handler`), which the
        // adapter derives from the same `Policy` methods.
        world: "quick-policy",
        pub_export_macro: true,
        export_macro_name: "__export_policy_world",
        default_bindings_module: "::wasmvisor_policy_sdk::bindings",
        additional_derives: [PartialEq],
    });
}

pub use bindings::wasmvisor::policy::types::{
    Action, Breakpoint, BreakpointKind, Capabilities, CpuidLeaf, DebugCause, DebugExit, Direction,
    EventSet, Exception, ExitEvent, ExitKind, GpaRange, HostError, IoExit, LogLevel, MemAccess,
    MemViolation, MmioExit, MsrExit, MsrRange, MsrReason, PhysWrite, PolicyInfo, PortRange,
    ProtectRequest, Protection, Reg, RegWrite, Segment, SegmentReg, ShutdownReason, StopRequest,
    Subscriptions, Verdict,
};
pub use config::{parse_range, parse_region, parse_u64, Config};
pub use trigger::LineTrigger;
pub use verdict::{mask, GP_VECTOR, UD_VECTOR};

/// The part of an exit every kind shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The vCPU that exited.
    pub vcpu: u32,
    /// Exits on this vCPU before this one.
    pub seq: u64,
    /// The guest instruction pointer at the exit.
    pub rip: u64,
}

impl From<&ExitEvent> for Exit {
    fn from(ev: &ExitEvent) -> Self {
        Exit {
            vcpu: ev.vcpu,
            seq: ev.seq,
            rip: ev.rip,
        }
    }
}

/// An exit-handling policy. See the [crate docs](crate) for an example.
///
/// One value lives in each instance, that is one per vCPU, so plain fields
/// are per-vCPU state; use [`host::counter_add`] for what vCPUs share.
pub trait Policy: Sized + 'static {
    /// Short name, shown in logs and events.
    const NAME: &'static str;
    /// The policy's version.
    const VERSION: &'static str;
    /// One line saying what it does.
    const DESCRIPTION: &'static str;

    /// Builds the policy from its config; returns it and what it wants to
    /// see. An unknown key should be an error ([`Config::check_keys`]).
    fn init(config: &Config) -> Result<(Self, Subscriptions), String>;

    /// An IN or OUT on a subscribed port.
    fn on_io(&mut self, ev: &Exit, io: IoExit) -> Verdict {
        let _ = (ev, io);
        Verdict::Decline
    }

    /// An access to a subscribed MMIO range.
    fn on_mmio(&mut self, ev: &Exit, mmio: MmioExit) -> Verdict {
        let _ = (ev, mmio);
        Verdict::Decline
    }

    /// RDMSR or WRMSR of a subscribed (or unknown) MSR.
    fn on_msr(&mut self, ev: &Exit, msr: MsrExit) -> Verdict {
        let _ = (ev, msr);
        Verdict::Decline
    }

    /// An access to a protected page.
    fn on_mem_violation(&mut self, ev: &Exit, violation: MemViolation) -> Verdict {
        let _ = (ev, violation);
        Verdict::Decline
    }

    /// A breakpoint or single step.
    fn on_debug(&mut self, ev: &Exit, debug: DebugExit) -> Verdict {
        let _ = (ev, debug);
        Verdict::Decline
    }

    /// The vCPU executed HLT.
    fn on_hlt(&mut self, ev: &Exit) -> Verdict {
        let _ = ev;
        Verdict::Decline
    }

    /// The guest can no longer run.
    fn on_shutdown(&mut self, ev: &Exit, reason: ShutdownReason) -> Verdict {
        let _ = (ev, reason);
        Verdict::Decline
    }

    /// One CPUID table entry of a subscribed function; returns what the
    /// guest will see.
    fn cpuid(&mut self, leaf: CpuidLeaf) -> CpuidLeaf {
        leaf
    }

    /// State for the next generation of this policy. Called during a hot
    /// swap on each vCPU, after this instance's last exit; the bytes go
    /// to the new instance's [`restore_state`](Policy::restore_state) on
    /// the same vCPU (`docs/control.md`, "State handoff"). Version the
    /// format: the next generation may be a different build.
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Takes the state the previous generation saved, before this
    /// instance's first exit; called after `init`. An error refuses the
    /// whole swap and the previous generation keeps serving. The previous
    /// generation may be another policy altogether, or one that saved
    /// nothing (an empty slice).
    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        let _ = state;
        Ok(())
    }
}

/// Sends one exit to the [`Policy`] method for its kind, as the exported
/// `handle-exit` does. Handy for testing a policy off the host.
pub fn dispatch<P: Policy>(policy: &mut P, event: ExitEvent) -> Verdict {
    let ev = Exit::from(&event);
    match event.kind {
        ExitKind::Io(io) => policy.on_io(&ev, io),
        ExitKind::Mmio(mmio) => policy.on_mmio(&ev, mmio),
        ExitKind::Msr(msr) => policy.on_msr(&ev, msr),
        ExitKind::MemViolation(v) => policy.on_mem_violation(&ev, v),
        ExitKind::Debug(d) => policy.on_debug(&ev, d),
        ExitKind::Hlt => policy.on_hlt(&ev),
        ExitKind::Shutdown(reason) => policy.on_shutdown(&ev, reason),
    }
}

/// Exports a [`Policy`] as the component's `handler` interface.
///
/// Use it once, at the root of a `cdylib` crate. The instance built by
/// `init` is kept in a thread-local (a component instance is
/// single-threaded); a second `init` replaces it. The component exports
/// exist only when building for Wasm: on other targets (unit tests, lints)
/// the policy is type-checked but nothing is exported.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __WASMVISOR_POLICY: ::core::cell::RefCell<::core::option::Option<$policy>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct __WasmvisorSlot;

            impl $crate::__private::Slot for __WasmvisorSlot {
                type Policy = $policy;
                fn with<R>(f: impl FnOnce(&mut ::core::option::Option<$policy>) -> R) -> R {
                    __WASMVISOR_POLICY.with(|cell| f(&mut cell.borrow_mut()))
                }
            }

            #[allow(dead_code)]
            type __WasmvisorAdapter = $crate::__private::Adapter<__WasmvisorSlot>;

            // The exports are named like `wasmvisor:policy/handler@0.1.0#init`,
            // which native linkers refuse in a shared library, so only a
            // Wasm build exports them; elsewhere the policy just type-checks.
            #[cfg(target_arch = "wasm32")]
            const _: () = {
                $crate::bindings::__export_policy_world!(
                    __WasmvisorAdapter with_types_in $crate::bindings
                );
            };
        };
    };
}

#[doc(hidden)]
pub mod __private {
    use core::marker::PhantomData;

    use core::cell::RefCell;

    use crate::bindings::exports::wasmvisor::policy::handler::Guest;
    use crate::bindings::exports::wasmvisor::policy::quick_handler::{self, QuickVerdict};
    use crate::{Action, Config, CpuidLeaf, ExitEvent, Policy, PolicyInfo, Subscriptions, Verdict};

    std::thread_local! {
        /// The actions of the last answer too long for `quick-verdict`,
        /// until the host takes them (right after, on the same exit).
        static PENDING: RefCell<Vec<Action>> = const { RefCell::new(Vec::new()) };
    }

    /// Where [`export_policy!`] keeps the instance.
    pub trait Slot: 'static {
        type Policy: Policy;
        fn with<R>(f: impl FnOnce(&mut Option<Self::Policy>) -> R) -> R;
    }

    /// Implements the generated `Guest` trait on top of a [`Policy`].
    pub struct Adapter<S>(PhantomData<S>);

    impl<S: Slot> Guest for Adapter<S> {
        fn info() -> PolicyInfo {
            PolicyInfo {
                name: S::Policy::NAME.into(),
                version: S::Policy::VERSION.into(),
                description: S::Policy::DESCRIPTION.into(),
            }
        }

        fn init(config: Vec<(String, String)>) -> Result<Subscriptions, String> {
            let config = Config::new(config);
            S::with(|slot| {
                *slot = None;
                let (policy, subscriptions) = S::Policy::init(&config)?;
                *slot = Some(policy);
                Ok(subscriptions)
            })
        }

        fn handle_exit(event: ExitEvent) -> Verdict {
            S::with(|slot| match slot {
                Some(policy) => crate::dispatch(policy, event),
                None => Verdict::Decline,
            })
        }

        fn cpuid(leaf: CpuidLeaf) -> CpuidLeaf {
            S::with(|slot| match slot {
                Some(policy) => policy.cpuid(leaf),
                None => leaf,
            })
        }

        fn save_state() -> Vec<u8> {
            S::with(|slot| slot.as_ref().map(Policy::save_state).unwrap_or_default())
        }

        fn restore_state(state: Vec<u8>) -> Result<(), String> {
            S::with(|slot| match slot {
                Some(policy) => policy.restore_state(&state),
                None => Err(format!("{}: restore-state before init", S::Policy::NAME)),
            })
        }
    }

    /// The list-free answer: the same verdict as `handle-exit`, with the
    /// common shapes sent as `quick-verdict` cases and the rest kept for
    /// `take-actions`. Policies do not change; hosts that predate the
    /// export keep calling `handle-exit`.
    impl<S: Slot> quick_handler::Guest for Adapter<S> {
        fn handle_exit_quick(event: ExitEvent) -> QuickVerdict {
            quick(<Self as Guest>::handle_exit(event))
        }

        fn take_actions() -> Vec<Action> {
            PENDING.with(|p| core::mem::take(&mut *p.borrow_mut()))
        }
    }

    /// `verdict` as `quick-verdict`; a list that is neither empty, one
    /// `resume` nor one `complete-read` waits in [`PENDING`].
    pub fn quick(verdict: Verdict) -> QuickVerdict {
        match verdict {
            Verdict::Decline => QuickVerdict::Decline,
            Verdict::Handled(actions) => match actions.as_slice() {
                [] | [Action::Resume] => QuickVerdict::Resume,
                [Action::CompleteRead(value)] => QuickVerdict::CompleteRead(*value),
                _ => {
                    PENDING.with(|p| *p.borrow_mut() = actions);
                    QuickVerdict::More
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::__private::{Adapter, Slot};
    use super::*;
    use crate::bindings::exports::wasmvisor::policy::handler::Guest;
    use core::cell::RefCell;

    struct Echo {
        last: u64,
        restored: Vec<u8>,
    }

    impl Policy for Echo {
        const NAME: &'static str = "echo";
        const VERSION: &'static str = "1.2.3";
        const DESCRIPTION: &'static str = "test";

        fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
            config.check_keys(&["port"])?;
            let port = config.u16("port")?.unwrap_or(0x80);
            Ok((
                Echo {
                    last: 0,
                    restored: Vec::new(),
                },
                Subscriptions::new().port(port).cpuid(1),
            ))
        }

        fn on_io(&mut self, ev: &Exit, io: IoExit) -> Verdict {
            self.last = ev.seq;
            Verdict::complete_sized(u64::from(io.port), io.size)
        }

        fn cpuid(&mut self, mut leaf: CpuidLeaf) -> CpuidLeaf {
            leaf.ecx = 0;
            leaf
        }

        fn save_state(&self) -> Vec<u8> {
            self.last.to_le_bytes().to_vec()
        }

        fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
            self.restored = state.to_vec();
            Ok(())
        }
    }

    thread_local! {
        static SLOT: RefCell<Option<Echo>> = const { RefCell::new(None) };
    }
    struct TestSlot;
    impl Slot for TestSlot {
        type Policy = Echo;
        fn with<R>(f: impl FnOnce(&mut Option<Echo>) -> R) -> R {
            SLOT.with(|c| f(&mut c.borrow_mut()))
        }
    }
    type A = Adapter<TestSlot>;

    fn io_event(seq: u64) -> ExitEvent {
        ExitEvent {
            vcpu: 0,
            seq,
            rip: 0x1000,
            kind: ExitKind::Io(IoExit {
                port: 0x1234,
                size: 1,
                direction: Direction::Read,
                data: 0,
            }),
        }
    }

    fn leaf() -> CpuidLeaf {
        CpuidLeaf {
            function: 1,
            index: 0,
            eax: 1,
            ebx: 2,
            ecx: 3,
            edx: 4,
        }
    }

    #[test]
    fn adapter_lifecycle() {
        let info = A::info();
        assert_eq!(
            (info.name.as_str(), info.version.as_str()),
            ("echo", "1.2.3")
        );

        // Before init: decline, pass CPUID through, no state.
        assert!(A::handle_exit(io_event(0)).is_decline());
        assert_eq!(A::cpuid(leaf()).ecx, 3);
        assert!(A::save_state().is_empty());
        assert!(A::restore_state(vec![1]).is_err());

        let err = A::init(vec![("bogus".into(), "1".into())]).err();
        assert_eq!(err.as_deref(), Some("unknown config key `bogus`"));
        assert!(A::handle_exit(io_event(0)).is_decline());

        let subs = A::init(vec![("port".into(), "0x1234".into())]).unwrap();
        assert_eq!(subs.ports[0].first, 0x1234);
        assert_eq!(subs.cpuid, [1]);
        match A::handle_exit(io_event(9)) {
            Verdict::Handled(a) => assert!(matches!(a[..], [Action::CompleteRead(0x34)])),
            Verdict::Decline => panic!("declined"),
        }
        assert_eq!(A::cpuid(leaf()).ecx, 0);
        assert_eq!(A::save_state(), 9u64.to_le_bytes());
        assert_eq!(A::restore_state(vec![7, 8]), Ok(()));
        TestSlot::with(|s| assert_eq!(s.as_ref().unwrap().restored, [7, 8]));
    }

    #[test]
    fn default_methods_decline() {
        struct Nothing;
        impl Policy for Nothing {
            const NAME: &'static str = "n";
            const VERSION: &'static str = "0";
            const DESCRIPTION: &'static str = "";
            fn init(_: &Config) -> Result<(Self, Subscriptions), String> {
                Ok((Nothing, Subscriptions::new()))
            }
        }
        let mut p = Nothing;
        let kinds = [
            ExitKind::Hlt,
            ExitKind::Shutdown(ShutdownReason::TripleFault),
            ExitKind::Msr(MsrExit {
                index: 1,
                direction: Direction::Read,
                value: 0,
                reason: MsrReason::Filtered,
            }),
            ExitKind::Mmio(MmioExit {
                gpa: 0,
                size: 4,
                direction: Direction::Write,
                data: 1,
            }),
            ExitKind::Debug(DebugExit {
                cause: DebugCause::SingleStep,
                slot: None,
                dr6: 0,
                dr7: 0,
            }),
            ExitKind::MemViolation(MemViolation {
                gpa: 0,
                access: MemAccess::Write,
                size: 1,
                data: 0,
            }),
        ];
        for kind in kinds {
            let ev = ExitEvent {
                vcpu: 1,
                seq: 2,
                rip: 3,
                kind,
            };
            assert!(dispatch(&mut p, ev).is_decline());
        }
        assert_eq!(p.cpuid(leaf()).ebx, 2);
        assert!(p.save_state().is_empty());
        assert_eq!(p.restore_state(&[1]), Ok(()));
    }

    #[test]
    fn quick_answers_carry_the_same_verdict() {
        use super::__private::quick;
        use crate::bindings::exports::wasmvisor::policy::quick_handler::{
            Guest as Quick, QuickVerdict,
        };

        A::init(vec![("port".into(), "0x1234".into())]).unwrap();
        assert_eq!(
            A::handle_exit_quick(io_event(1)),
            QuickVerdict::CompleteRead(0x34)
        );

        assert_eq!(quick(Verdict::decline()), QuickVerdict::Decline);
        assert_eq!(quick(Verdict::resume()), QuickVerdict::Resume);
        assert_eq!(
            quick(Verdict::handled(vec![Action::Resume])),
            QuickVerdict::Resume
        );
        assert_eq!(quick(Verdict::complete(7)), QuickVerdict::CompleteRead(7));
        // Anything longer waits for `take-actions`, once.
        let long = Verdict::complete(7).and(Action::Step);
        assert_eq!(quick(long.clone()), QuickVerdict::More);
        assert_eq!(Verdict::handled(A::take_actions()), long);
        assert!(A::take_actions().is_empty());
        assert_eq!(quick(Verdict::gp()), QuickVerdict::More);
        assert_eq!(Verdict::handled(A::take_actions()), Verdict::gp());
    }
}
