//! One policy instance serving one vCPU: calls into its exports under the
//! deadline, lends the vCPU to the host imports during an exit, and
//! rebuilds the instance after a trap (which leaves a component instance
//! unusable).

use std::marker::PhantomData;

use wasmtime::Store;
use wasmvisor_exit::{ExitEvent, Subscriptions, VcpuAccess};

use crate::bindings::exports::wasmvisor::policy::handler::Guest;
use crate::bindings::exports::wasmvisor::policy::quick_handler::QuickVerdict;
use crate::bindings::wasmvisor::policy::types as wit;
use crate::convert;
use crate::ctx::{Ctx, InstanceContext};
use crate::engine::PolicyEngine;
use crate::error::{one_line, CallError, PolicyError};
use crate::image::{Exports, PolicyImage};
use crate::limits::Limits;
use crate::record::{Entry, Outcome};
use crate::tape::{ImportCall, Tape};
use crate::types::{CpuidLeaf, PolicyInfo, Verdict};

/// A running policy instance for one vCPU. `Send`, not `Sync`: it lives on
/// its vCPU's thread.
pub struct PolicyInstance<V> {
    store: Store<Ctx>,
    bindings: Exports,
    image: PolicyImage,
    limits: Limits,
    ticks: u64,
    /// The configuration `init` accepted, replayed after a rebuild.
    config: Option<Vec<(String, String)>>,
    /// Set when a rebuild failed; the next call tries again first.
    broken: Option<String>,
    _vcpu: PhantomData<fn(V) -> V>,
}

impl<V: VcpuAccess + Send + 'static> PolicyInstance<V> {
    pub(crate) fn new(
        image: PolicyImage,
        inst: InstanceContext,
        limits: Limits,
    ) -> Result<Self, PolicyError> {
        let (store, bindings) = start::<V>(&image, inst, &limits)?;
        Ok(PolicyInstance {
            store,
            bindings,
            image,
            limits,
            ticks: limits.deadline_ticks(),
            config: None,
            broken: None,
            _vcpu: PhantomData,
        })
    }

    /// The policy's name, version and description.
    pub fn info(&mut self) -> Result<PolicyInfo, PolicyError> {
        let info = self
            .call(|h, s| h.call_info(s))
            .map_err(|e| self.call_error("info", e))?;
        Ok(convert::policy_info(info))
    }

    /// Passes the operator's configuration; returns what the policy wants
    /// to see. The configuration is kept to re-initialise the instance
    /// after a trap.
    pub fn init(&mut self, config: &[(String, String)]) -> Result<Subscriptions, PolicyError> {
        let recording = self.start_recording();
        self.store.data_mut().constants = Some(Vec::new());
        let result = self.call(|h, s| h.call_init(s, config));
        let constants = self.store.data_mut().constants.take().unwrap_or_default();
        if recording {
            let outcome = match &result {
                Ok(r) => Outcome::Returned(r.clone()),
                Err(e) => Outcome::Failed(e.to_string()),
            };
            self.finish_recording(|policy, vcpu, imports| Entry::Init {
                policy,
                vcpu,
                config: config.to_vec(),
                imports,
                outcome,
            });
        }
        match result.map_err(|e| self.call_error("init", e))? {
            Ok(subs) => {
                self.config = Some(config.to_vec());
                let mut subs = convert::subscriptions(subs);
                subs.constants = constants;
                Ok(subs)
            }
            Err(reason) => Err(PolicyError::InitRejected {
                policy: self.policy_name(),
                reason,
            }),
        }
    }

    /// Lets the policy compute one CPUID entry while the vCPU is built.
    pub fn cpuid(&mut self, leaf: CpuidLeaf) -> Result<CpuidLeaf, PolicyError> {
        let leaf = convert::cpuid_to_wit(leaf);
        let out = self
            .call(|h, s| h.call_cpuid(s, leaf))
            .map_err(|e| self.call_error("cpuid", e))?;
        Ok(convert::cpuid_from_wit(out))
    }

    /// Asks the policy for its answer to `event`.
    ///
    /// Lends the vCPU to the store for the duration of the call
    /// (`vcpu` is taken into the store data, and put back afterwards, even
    /// on a trap) so that host imports like `get-reg` can reach it. On
    /// failure the instance has already been rebuilt and re-initialised
    /// when this returns.
    pub fn handle_exit(
        &mut self,
        event: &ExitEvent,
        vcpu: &mut Option<V>,
    ) -> Result<Verdict, CallError> {
        let event = convert::exit_event(event);
        if !self.start_recording() {
            return self.answer(event, vcpu).map(Answer::into_verdict);
        }
        let result = self.exit_call(event, vcpu);
        let outcome = match &result {
            Ok(v) => Outcome::Returned(v.clone()),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        self.finish_recording(|policy, vcpu, imports| Entry::HandleExit {
            policy,
            vcpu,
            event,
            imports,
            outcome,
        });
        result.map(convert::verdict)
    }

    /// Calls `handle-exit` (or `handle-exit-quick`) with the vCPU lent;
    /// the answer in the contract's terms (recording, replay).
    pub(crate) fn exit_call(
        &mut self,
        event: wit::ExitEvent,
        vcpu: &mut Option<V>,
    ) -> Result<wit::Verdict, CallError> {
        self.answer(event, vcpu).map(Answer::into_wit)
    }

    /// Whether this instance is called through `handle-exit-quick`.
    pub fn answers_quick(&self) -> bool {
        self.bindings.quick.is_some()
    }

    /// Asks for the answer through the cheapest export the policy has:
    /// `handle-exit-quick` (and `take-actions` when it answers `more`), or
    /// else `handle-exit`.
    fn answer(&mut self, event: wit::ExitEvent, vcpu: &mut Option<V>) -> Result<Answer, CallError> {
        if self.broken.is_some() {
            self.repair()?;
        }
        self.store.data_mut().swap_vcpu(vcpu);
        arm(&mut self.store, self.image.engine(), self.ticks);
        let result = match &self.bindings.quick {
            Some(quick) => match quick.call_handle_exit_quick(&mut self.store, event) {
                Ok(QuickVerdict::Decline) => Ok(Answer::Decline),
                Ok(QuickVerdict::Resume) => Ok(Answer::Resume),
                Ok(QuickVerdict::CompleteRead(value)) => Ok(Answer::CompleteRead(value)),
                // The same exit, the vCPU still lent, the same deadline.
                Ok(QuickVerdict::More) => quick
                    .call_take_actions(&mut self.store)
                    .map(|actions| Answer::Listed(wit::Verdict::Handled(actions))),
                Err(e) => Err(e),
            },
            None => self
                .bindings
                .handler
                .call_handle_exit(&mut self.store, event)
                .map(Answer::Listed),
        };
        self.store.data_mut().swap_vcpu(vcpu);
        result.map_err(|error| self.recover(&error))
    }

    /// Starts a tape if the VM is being recorded; true if it did.
    fn start_recording(&mut self) -> bool {
        let ctx = self.store.data_mut();
        let on = ctx.inst.shared.recorder().is_some();
        if on {
            ctx.tape = Some(Tape::Record(Vec::new()));
        }
        on
    }

    /// Takes the tape and writes the entry `make` builds from it. The
    /// store may have been rebuilt by a failure, which drops the tape:
    /// the entry then has the import calls made before it.
    fn finish_recording(&mut self, make: impl FnOnce(String, u32, Vec<ImportCall>) -> Entry) {
        let ctx = self.store.data_mut();
        let imports = match ctx.tape.take() {
            Some(Tape::Record(calls)) => calls,
            _ => Vec::new(),
        };
        let shared = std::sync::Arc::clone(&ctx.inst.shared);
        let entry = make(ctx.inst.policy_name.clone(), ctx.inst.vcpu_index, imports);
        if let Some(recorder) = shared.recorder() {
            recorder.write(&entry);
        }
    }

    /// Runs `f` with import calls answered from `imports` instead of the
    /// VM (`replay.rs`); returns what it returned and the recorded calls
    /// the policy did not make.
    pub(crate) fn with_tape<R>(
        &mut self,
        imports: Vec<ImportCall>,
        f: impl FnOnce(&mut Self) -> R,
    ) -> (R, Vec<ImportCall>) {
        self.store.data_mut().tape = Some(Tape::Replay(imports.into()));
        let out = f(self);
        let left = match self.store.data_mut().tape.take() {
            Some(Tape::Replay(calls)) => calls.into(),
            _ => Vec::new(),
        };
        (out, left)
    }

    /// Calls `init` without converting its answer (replay).
    pub(crate) fn init_raw(
        &mut self,
        config: &[(String, String)],
    ) -> Result<Result<wit::Subscriptions, String>, CallError> {
        self.store.data_mut().constants = Some(Vec::new());
        let result = self.call(|h, s| h.call_init(s, config));
        self.store.data_mut().constants = None;
        if matches!(result, Ok(Ok(_))) {
            self.config = Some(config.to_vec());
        }
        result
    }

    /// The policy's state, for the next generation (hot swap).
    pub fn save_state(&mut self) -> Result<Vec<u8>, PolicyError> {
        self.call(|h, s| h.call_save_state(s))
            .map_err(|e| self.call_error("save-state", e))
    }

    /// Hands the previous generation's state to this one.
    pub fn restore_state(&mut self, state: &[u8]) -> Result<(), PolicyError> {
        self.call(|h, s| h.call_restore_state(s, state))
            .map_err(|e| self.call_error("restore-state", e))?
            .map_err(|reason| PolicyError::RestoreRejected {
                policy: self.policy_name(),
                reason,
            })
    }

    /// Calls one export with no vCPU lent, under the deadline.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&Guest, &mut Store<Ctx>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        if self.broken.is_some() {
            self.repair()?;
        }
        arm(&mut self.store, self.image.engine(), self.ticks);
        f(&self.bindings.handler, &mut self.store).map_err(|error| self.recover(&error))
    }

    /// Classifies a failed call and replaces the now unusable instance.
    fn recover(&mut self, error: &wasmtime::Error) -> CallError {
        let failure = classify(self.store.data_mut(), error);
        if let Err(reason) = self.rebuild() {
            self.broken = Some(reason);
        }
        failure
    }

    /// Retries a failed rebuild.
    fn repair(&mut self) -> Result<(), CallError> {
        match self.rebuild() {
            Ok(()) => {
                self.broken = None;
                Ok(())
            }
            Err(reason) => {
                self.broken = Some(reason.clone());
                Err(CallError::Unavailable(reason))
            }
        }
    }

    /// Replaces the store and instance with fresh ones and replays `init`.
    fn rebuild(&mut self) -> Result<(), String> {
        let inst = self.store.data().inst.clone();
        let (store, bindings) =
            start::<V>(&self.image, inst, &self.limits).map_err(|e| e.to_string())?;
        self.store = store;
        self.bindings = bindings;
        let Some(config) = &self.config else {
            return Ok(());
        };
        arm(&mut self.store, self.image.engine(), self.ticks);
        // The replayed init declares its constants again; the host keeps
        // the ones from the first init, which the routes were built from.
        self.store.data_mut().constants = Some(Vec::new());
        let result = self.bindings.handler.call_init(&mut self.store, config);
        self.store.data_mut().constants = None;
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(reason)) => Err(format!("init rejected the configuration: {reason}")),
            Err(error) => Err(format!(
                "init failed: {}",
                classify(self.store.data_mut(), &error)
            )),
        }
    }

    fn call_error(&self, export: &'static str, error: CallError) -> PolicyError {
        PolicyError::Call {
            policy: self.policy_name(),
            export,
            error,
        }
    }

    fn policy_name(&self) -> String {
        self.store.data().inst.policy_name.clone()
    }

    /// The image this instance was made from.
    pub fn image(&self) -> &PolicyImage {
        &self.image
    }
}

impl<V> std::fmt::Debug for PolicyInstance<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyInstance")
            .field("image", &self.image)
            .field("vcpu", &self.store.data().inst.vcpu_index)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Creates a store for `inst` and instantiates the image in it.
fn start<V: VcpuAccess + Send + 'static>(
    image: &PolicyImage,
    inst: InstanceContext,
    limits: &Limits,
) -> Result<(Store<Ctx>, Exports), PolicyError> {
    let policy = inst.policy_name.clone();
    let mut store = Store::new(
        image.engine().wasmtime(),
        Ctx::new::<V>(inst, limits, image.wasi()),
    );
    store.limiter(|ctx| &mut ctx.limiter);
    if image.engine().deadline_mechanism().epoch() {
        store.epoch_deadline_callback(cpu_time_deadline(limits));
    }
    // Start-up code runs under the same deadline as a call.
    arm(&mut store, image.engine(), limits.deadline_ticks());
    match image.pre().instantiate(&mut store) {
        Ok(bindings) => Ok((store, bindings)),
        Err(e) => Err(PolicyError::Instantiate {
            policy,
            error: classify(store.data_mut(), &e),
        }),
    }
}

/// The epoch callback that makes a deadline count the vCPU thread's CPU
/// time rather than wall time. Epoch ticks are wall-clock, so a thread
/// descheduled for a while (two cores, a busy host) would otherwise lose
/// its call. When the deadline first fires, the callback notes the
/// thread's CPU time, then checks every other tick and interrupts once the
/// thread has used most of another deadline of CPU since that mark.
/// Nothing of this runs on a call that finishes in time.
fn cpu_time_deadline(
    limits: &Limits,
) -> impl FnMut(wasmtime::StoreContextMut<'_, Ctx>) -> wasmtime::Result<wasmtime::UpdateDeadline>
       + Send
       + Sync
       + 'static {
    let ticks = limits.deadline_ticks();
    // Most of the window: the first tick after the mark may be partial.
    let budget = limits.deadline.mul_f64(0.8);
    move |mut cx| {
        let now = cpu_time::ThreadTime::now().as_duration();
        // The mark stays at the first fire, so CPU time accumulates across
        // windows however small the thread's share of the host is.
        let mark = *cx.data_mut().cpu_mark.get_or_insert(now);
        if now != mark && now.saturating_sub(mark) >= budget {
            Err(wasmtime::Trap::Interrupt.into())
        } else {
            Ok(wasmtime::UpdateDeadline::Continue(ticks.min(2)))
        }
    }
}

/// Arms the deadline of the next call: `ticks` epoch ticks and, on an
/// engine that meters fuel (measurements only), a full fuel budget.
fn arm(store: &mut Store<Ctx>, engine: &PolicyEngine, ticks: u64) {
    let mechanism = engine.deadline_mechanism();
    if mechanism.epoch() {
        store.set_epoch_deadline(ticks);
        store.data_mut().cpu_mark = None;
    }
    if let Some(budget) = mechanism.fuel() {
        // Fails only on an engine without fuel, which has no budget.
        let _ = store.set_fuel(budget);
    }
}

/// Says why a call failed, from the error and what the store recorded.
fn classify(ctx: &mut Ctx, error: &wasmtime::Error) -> CallError {
    if let Some(fault) = ctx.fault.take() {
        return CallError::Vcpu(fault);
    }
    if let Some(exceeded) = ctx.limiter.exceeded.take() {
        return exceeded;
    }
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt | wasmtime::Trap::OutOfFuel) => CallError::Timeout,
        _ => CallError::Trap(one_line(error)),
    }
}

/// A policy's answer before it is converted: the list-free cases of
/// `quick-verdict`, or a `verdict` with its list.
enum Answer {
    Decline,
    Resume,
    CompleteRead(u64),
    Listed(wit::Verdict),
}

impl Answer {
    /// In the host's terms, allocating nothing for `resume` and one
    /// action for `complete-read`.
    fn into_verdict(self) -> Verdict {
        match self {
            Answer::Decline => Verdict::Decline,
            Answer::Resume => Verdict::Handled(Vec::new()),
            Answer::CompleteRead(value) => {
                Verdict::Handled(vec![wasmvisor_exit::Action::CompleteRead(value)])
            }
            Answer::Listed(v) => convert::verdict(v),
        }
    }

    /// In the contract's `verdict` terms, as `handle-exit` would have
    /// answered (recordings hold these).
    fn into_wit(self) -> wit::Verdict {
        match self {
            Answer::Decline => wit::Verdict::Decline,
            Answer::Resume => wit::Verdict::Handled(Vec::new()),
            Answer::CompleteRead(value) => {
                wit::Verdict::Handled(vec![wit::Action::CompleteRead(value)])
            }
            Answer::Listed(v) => v,
        }
    }
}
