//! The shared wasmtime engine and the ticker thread that advances its
//! epoch, which is what call deadlines are counted in (ADR 0002).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

use crate::bindings::QuickPolicy;
use crate::ctx::Ctx;
use crate::wasi::WasiGrants;

use crate::cache::ComponentCache;
use crate::error::{one_line, PolicyError};

/// How often the ticker advances the epoch: one deadline tick.
pub const TICK: Duration = Duration::from_millis(1);

/// How an engine bounds the run time of a policy call.
///
/// Only [`Epoch`](Self::Epoch), the default, is meant for a VM: the other
/// variants exist so that `benches/deadline.rs` can measure the choice
/// recorded in `docs/adr/0002-call-deadlines.md`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeadlineMechanism {
    /// Nothing: a policy that loops never returns.
    Unbounded,
    /// Epoch interruption: [`Limits::deadline`](crate::Limits::deadline)
    /// counted in [`TICK`]s of a ticker thread, armed before each call,
    /// then confirmed against the vCPU thread's CPU time.
    #[default]
    Epoch,
    /// Fuel: each call (and instantiation) may execute `budget` units,
    /// about one per Wasm operator; running out is a timeout.
    Fuel {
        /// Fuel given to each call.
        budget: u64,
    },
    /// Both: whichever runs out first ends the call.
    EpochAndFuel {
        /// Fuel given to each call.
        budget: u64,
    },
}

impl DeadlineMechanism {
    /// Whether calls are bounded by epoch deadlines.
    pub(crate) fn epoch(self) -> bool {
        matches!(self, Self::Epoch | Self::EpochAndFuel { .. })
    }

    /// The fuel budget of each call, if calls are metered.
    pub(crate) fn fuel(self) -> Option<u64> {
        match self {
            Self::Fuel { budget } | Self::EpochAndFuel { budget } => Some(budget),
            Self::Unbounded | Self::Epoch => None,
        }
    }
}

/// Linkers are shared by the policies of the same WASI grants that import
/// the same WASI interfaces (`wasi::interfaces`).
type LinkerKey = (WasiGrants, Vec<String>);

/// The compiler and runtime shared by every policy of a VM.
///
/// Cloning is cheap. The ticker thread runs until the last clone, and the
/// last image or instance made from it, is dropped: a live instance never
/// loses its deadline.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: Engine,
    mechanism: DeadlineMechanism,
    /// Held for its `Drop`, which stops the thread.
    _ticker: Option<Arc<Ticker>>,
    /// Where precompiled components are kept, if anywhere.
    cache: Option<ComponentCache>,
    /// One linker per WASI grant set, built on first use: linking the
    /// host and WASI interfaces costs more than instantiating a policy,
    /// and a hot swap should not pay it each time.
    linkers: Arc<Mutex<HashMap<LinkerKey, Arc<Linker<Ctx>>>>>,
}

impl PolicyEngine {
    /// Creates an engine with the component model and epoch interruption
    /// on, and starts its ticker thread.
    pub fn new() -> Result<Self, PolicyError> {
        Self::with_deadline_mechanism(DeadlineMechanism::Epoch)
    }

    /// Creates an engine that bounds calls with `mechanism` instead of the
    /// default epoch deadline. For measurements only: see
    /// [`DeadlineMechanism`].
    #[doc(hidden)]
    pub fn with_deadline_mechanism(mechanism: DeadlineMechanism) -> Result<Self, PolicyError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(mechanism.epoch())
            .consume_fuel(mechanism.fuel().is_some());
        let engine = Engine::new(&config).map_err(|e| PolicyError::Engine(one_line(&e)))?;
        let ticker = if mechanism.epoch() {
            let ticker = Ticker::start(engine.clone()).map_err(PolicyError::Ticker)?;
            Some(Arc::new(ticker))
        } else {
            None
        };
        Ok(PolicyEngine {
            engine,
            mechanism,
            _ticker: ticker,
            cache: None,
            linkers: Arc::default(),
        })
    }

    /// Loads components through `cache`: compiled once, deserialized
    /// afterwards.
    pub fn with_cache(mut self, cache: ComponentCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The linker for policies granted `wasi` that import the WASI
    /// `interfaces` (unversioned names, from `wasi::interfaces`).
    pub(crate) fn linker(
        &self,
        wasi: WasiGrants,
        interfaces: Vec<String>,
    ) -> Result<Arc<Linker<Ctx>>, wasmtime::Error> {
        let mut linkers = self.linkers.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (wasi, interfaces);
        if let Some(l) = linkers.get(&key) {
            return Ok(Arc::clone(l));
        }
        let mut linker: Linker<Ctx> = Linker::new(&self.engine);
        // The imports of `quick-policy` are those of `policy`.
        QuickPolicy::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(&mut linker, |c| c)?;
        crate::wasi::add_to_linker(&mut linker, wasi, &key.1)?;
        let linker = Arc::new(linker);
        linkers.insert(key, Arc::clone(&linker));
        Ok(linker)
    }

    /// The precompiled-component cache, if one is in use.
    pub fn cache(&self) -> Option<&ComponentCache> {
        self.cache.as_ref()
    }

    /// The wasmtime engine.
    pub(crate) fn wasmtime(&self) -> &Engine {
        &self.engine
    }

    /// How calls are bounded.
    pub(crate) fn deadline_mechanism(&self) -> DeadlineMechanism {
        self.mechanism
    }
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine").finish_non_exhaustive()
    }
}

/// A thread calling `Engine::increment_epoch` every [`TICK`].
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> std::io::Result<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("wasmvisor-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(Ticker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // The thread only sleeps and increments; it cannot panic.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_engine_bounds_calls_by_epoch_only() {
        assert_eq!(DeadlineMechanism::default(), DeadlineMechanism::Epoch);
        let engine = PolicyEngine::new().expect("engine");
        assert_eq!(engine.deadline_mechanism(), DeadlineMechanism::Epoch);
        assert!(engine._ticker.is_some());
    }

    #[test]
    fn mechanisms_say_what_they_arm() {
        let arms = |m: DeadlineMechanism| (m.epoch(), m.fuel());
        assert_eq!(arms(DeadlineMechanism::Unbounded), (false, None));
        assert_eq!(arms(DeadlineMechanism::Epoch), (true, None));
        assert_eq!(
            arms(DeadlineMechanism::Fuel { budget: 5 }),
            (false, Some(5))
        );
        assert_eq!(
            arms(DeadlineMechanism::EpochAndFuel { budget: 7 }),
            (true, Some(7))
        );
        let fuel = PolicyEngine::with_deadline_mechanism(DeadlineMechanism::Fuel { budget: 5 })
            .expect("engine");
        assert!(fuel._ticker.is_none(), "no ticker without epochs");
    }
}
