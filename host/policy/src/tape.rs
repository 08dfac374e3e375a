//! The tape of host import calls one policy call made: written while
//! recording (`--record`), read back while replaying (`wasmvisor replay`),
//! so that a replayed policy sees exactly the registers, memory, counters
//! and results it saw in the VM, with no VM.

use std::collections::VecDeque;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ctx::Ctx;

/// One import call: its WIT name, its arguments and what it returned, in
/// the serde form of the WIT types (`docs/record-replay.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportCall {
    pub call: String,
    pub args: Value,
    pub result: Value,
}

/// What the store does with import calls during one export call.
#[derive(Debug)]
pub(crate) enum Tape {
    /// Perform them and note each one.
    Record(Vec<ImportCall>),
    /// Answer them from a recording, checking that each is the call the
    /// recording has next.
    Replay(VecDeque<ImportCall>),
}

fn to_value<T: Serialize>(v: &T) -> Value {
    // The WIT types serialise infallibly (no maps with non-string keys).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Ctx {
    /// True while a tape is running (recording or replaying).
    pub(crate) fn taping(&self) -> bool {
        self.tape.is_some()
    }

    /// Runs one import through the tape: performs and notes it when
    /// recording, answers it from the recording when replaying. A replayed
    /// call that differs from the recorded one traps: the policy diverged.
    pub(crate) fn taped<R: Serialize + DeserializeOwned>(
        &mut self,
        call: &'static str,
        args: Value,
        live: impl FnOnce(&mut Self) -> wasmtime::Result<R>,
    ) -> wasmtime::Result<R> {
        match &mut self.tape {
            None => live(self),
            Some(Tape::Record(_)) => {
                let result = live(self)?;
                if let Some(Tape::Record(calls)) = &mut self.tape {
                    calls.push(ImportCall {
                        call: call.to_string(),
                        result: to_value(&result),
                        args,
                    });
                }
                Ok(result)
            }
            Some(Tape::Replay(calls)) => match calls.pop_front() {
                Some(c) if c.call == call && c.args == args => serde_json::from_value(c.result)
                    .map_err(|e| {
                        wasmtime::Error::msg(format!("replay: recorded result of {call}: {e}"))
                    }),
                Some(c) => Err(wasmtime::Error::msg(format!(
                    "replay diverged: the policy called {call}({args}) where the recording has {}({})",
                    c.call, c.args
                ))),
                None => Err(wasmtime::Error::msg(format!(
                    "replay diverged: the policy called {call}({args}) after its recorded calls"
                ))),
            },
        }
    }
}

/// Serialises import arguments for the tape.
pub(crate) fn args<T: Serialize>(v: &T) -> Value {
    to_value(v)
}
