//! [`Harness`]: one policy instance driven the way the host drives it.

use core::fmt;

use super::FakeHost;
use crate::{Config, CpuidLeaf, ExitEvent, ExitKind, Policy, Reg, Subscriptions, Verdict};

/// One instance of policy `P` on a [`FakeHost`], as the host runs it on
/// one vCPU: `init` first, then exits, CPUID entries and the state
/// exports, each with the fake installed.
///
/// ```
/// use wasmvisor_policy_sdk::testing::{exit, Harness};
/// use wasmvisor_policy_sdk::{host, Config, Exit, IoExit, Policy, Subscriptions, Verdict};
///
/// /// Counts the writes to a port across all vCPUs.
/// struct Tally;
///
/// impl Policy for Tally {
///     const NAME: &'static str = "tally";
///     const VERSION: &'static str = "0.1.0";
///     const DESCRIPTION: &'static str = "counts writes";
///
///     fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
///         config.check_keys(&[])?;
///         Ok((Tally, Subscriptions::new().port(0x80)))
///     }
///
///     fn on_io(&mut self, _ev: &Exit, io: IoExit) -> Verdict {
///         let n = host::counter_add("writes", 1);
///         host::emit("write", &format!("{{\"n\":{n},\"data\":{}}}", io.data));
///         Verdict::resume()
///     }
/// }
///
/// let mut h = Harness::<Tally>::new(&[]).unwrap();
/// assert_eq!(h.subscriptions().ports[0].first, 0x80);
/// assert_eq!(h.exit(exit::io_write(0x80, 1, 7)), Verdict::resume());
/// assert_eq!(h.host().events_of("write"), [r#"{"n":1,"data":7}"#]);
/// assert_eq!(h.host().counter("writes"), Some(1));
/// assert!(Harness::<Tally>::new(&[("port", "1")]).is_err());
/// ```
pub struct Harness<P: Policy> {
    policy: P,
    subscriptions: Subscriptions,
    host: FakeHost,
    seq: u64,
}

impl<P: Policy> fmt::Debug for Harness<P> {
    // `P` need not be `Debug`: name it instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("policy", &P::NAME)
            .field("subscriptions", &self.subscriptions)
            .field("host", &self.host)
            .field("seq", &self.seq)
            .finish()
    }
}

impl<P: Policy> Harness<P> {
    /// Runs `P::init` with `config` on a new [`FakeHost`], then grants the
    /// capabilities the subscriptions ask for, as an operator who passes
    /// `@grant=` for each. An `Err` is `init`'s message.
    pub fn new(config: &[(&str, &str)]) -> Result<Self, String> {
        let harness = Self::with_host(FakeHost::new(), config)?;
        harness.host.grant(harness.subscriptions.capabilities);
        Ok(harness)
    }

    /// Runs `P::init` with `config` on `host`, whose grants stay as the
    /// test set them. Constant answers may be declared during `init` only,
    /// as on the host.
    pub fn with_host(host: FakeHost, config: &[(&str, &str)]) -> Result<Self, String> {
        let config = Config::from_pairs(config.iter().copied());
        let (policy, subscriptions) = host.during_init(|| P::init(&config))?;
        Ok(Harness {
            policy,
            subscriptions,
            host,
            seq: 0,
        })
    }

    /// What `init` subscribed to.
    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subscriptions
    }

    /// The fake this instance runs on: program it, or read what the
    /// policy did.
    pub fn host(&self) -> &FakeHost {
        &self.host
    }

    /// The policy, for checking its state.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// The policy, for changing its state.
    pub fn policy_mut(&mut self) -> &mut P {
        &mut self.policy
    }

    /// The `seq` the next [`exit`](Self::exit) carries: the exits
    /// delivered so far.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Delivers an exit of `kind` and returns the verdict. The event
    /// carries the fake's vCPU, the next `seq` (counting from 0) and the
    /// fake's RIP register.
    pub fn exit(&mut self, kind: ExitKind) -> Verdict {
        let event = ExitEvent {
            vcpu: self.host.vcpu_id(),
            seq: self.seq,
            rip: self.host.reg(Reg::Rip),
            kind,
        };
        self.seq += 1;
        self.deliver(event)
    }

    /// Sets the fake's RIP to `rip`, then delivers an exit of `kind`.
    pub fn exit_at(&mut self, rip: u64, kind: ExitKind) -> Verdict {
        self.host.set_reg(Reg::Rip, rip);
        self.exit(kind)
    }

    /// Delivers `event` as given; the `seq` of later [`exit`](Self::exit)
    /// calls does not change.
    pub fn deliver(&mut self, event: ExitEvent) -> Verdict {
        let policy = &mut self.policy;
        self.host.run(|| crate::dispatch(policy, event))
    }

    /// One CPUID table entry through [`Policy::cpuid`].
    pub fn cpuid(&mut self, leaf: CpuidLeaf) -> CpuidLeaf {
        let policy = &mut self.policy;
        self.host.run(|| policy.cpuid(leaf))
    }

    /// [`Policy::save_state`], as at a hot swap.
    pub fn save_state(&self) -> Vec<u8> {
        self.host.run(|| self.policy.save_state())
    }

    /// [`Policy::restore_state`], as at a hot swap.
    pub fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        let policy = &mut self.policy;
        self.host.run(|| policy.restore_state(state))
    }
}
