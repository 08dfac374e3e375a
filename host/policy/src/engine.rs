//! The shared wasmtime engine and the ticker thread that advances its
//! epoch, which is what call deadlines are counted in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine};

use crate::error::{one_line, PolicyError};

/// How often the ticker advances the epoch: one deadline tick.
pub const TICK: Duration = Duration::from_millis(1);

/// The compiler and runtime shared by every policy of a VM.
///
/// Cloning is cheap. The ticker thread runs until the last clone, and the
/// last image or instance made from it, is dropped: a live instance never
/// loses its deadline.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: Engine,
    /// Held for its `Drop`, which stops the thread.
    _ticker: Arc<Ticker>,
}

impl PolicyEngine {
    /// Creates an engine with the component model and epoch interruption
    /// on, and starts its ticker thread.
    pub fn new() -> Result<Self, PolicyError> {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| PolicyError::Engine(one_line(&e)))?;
        let ticker = Ticker::start(engine.clone()).map_err(PolicyError::Ticker)?;
        Ok(PolicyEngine {
            engine,
            _ticker: Arc::new(ticker),
        })
    }

    /// The wasmtime engine.
    pub(crate) fn wasmtime(&self) -> &Engine {
        &self.engine
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
