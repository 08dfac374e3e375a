//! Per-instance resource limits: the call deadline and the caps on linear
//! memory and tables, enforced by a `ResourceLimiter` that remembers which
//! limit a policy hit so the failure can be reported precisely.

use std::time::Duration;

use wasmtime::ResourceLimiter;

use crate::engine::TICK;
use crate::error::CallError;

/// Fewest epoch ticks a call is given: a wall-clock deadline can fire early
/// when the vCPU thread is descheduled, so short deadlines are padded.
pub const MIN_DEADLINE_TICKS: u64 = 10;

/// What one policy instance may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time one call may take. The epoch ticker (wall-clock, in
    /// [`TICK`]s, at least [`MIN_DEADLINE_TICKS`]) fires first; the call is
    /// then interrupted once the vCPU thread has used most of another
    /// deadline of CPU, so a descheduled thread keeps its call and a
    /// spinning one stops after about two deadlines.
    pub deadline: Duration,
    /// Largest size of each linear memory, in bytes. A wasm32-wasip2
    /// policy starts with about 1.1 MiB (its 1 MiB stack).
    pub memory_bytes: usize,
    /// Largest number of elements of each table.
    pub table_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(10),
            memory_bytes: 16 << 20,
            table_elements: 10_000,
        }
    }
}

impl Limits {
    /// The epoch deadline for one call, in ticks beyond the current epoch.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        let ticks = self.deadline.as_nanos().div_ceil(TICK.as_nanos());
        let ticks = u64::try_from(ticks).unwrap_or(u64::MAX - 1);
        // +1: the current tick may be about to end.
        ticks.max(MIN_DEADLINE_TICKS).saturating_add(1)
    }
}

/// The store's limiter: refuses growth past [`Limits`] with a trap and
/// records which limit it was.
pub(crate) struct StoreLimiter {
    memory_bytes: usize,
    table_elements: usize,
    /// Set when growth was refused; taken when the failed call is reported.
    pub(crate) exceeded: Option<CallError>,
}

impl StoreLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        StoreLimiter {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            exceeded: None,
        }
    }

    fn refuse(&mut self, what: &'static str, requested: usize, limit: usize) -> wasmtime::Error {
        let error = CallError::Limit {
            what,
            requested,
            limit,
        };
        let message = error.to_string();
        self.exceeded = Some(error);
        wasmtime::Error::msg(message)
    }
}

impl ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(self.refuse("memory", desired, self.memory_bytes));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(self.refuse("table", desired, self.table_elements));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_deadline_is_ten_ticks_plus_one() {
        assert_eq!(Limits::default().deadline_ticks(), 11);
    }

    #[test]
    fn short_deadlines_are_padded_and_long_ones_rounded_up() {
        let at = |d| {
            Limits {
                deadline: d,
                ..Limits::default()
            }
            .deadline_ticks()
        };
        assert_eq!(at(Duration::ZERO), 11);
        assert_eq!(at(Duration::from_micros(2500)), 11);
        assert_eq!(at(Duration::from_micros(50_500)), 52);
        assert_eq!(at(Duration::MAX), u64::MAX);
    }

    #[test]
    fn limiter_refuses_growth_past_the_cap_and_remembers_it() {
        let mut limiter = StoreLimiter::new(&Limits {
            memory_bytes: 1 << 20,
            ..Limits::default()
        });
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(limiter.exceeded.is_none());
        let err = limiter.memory_growing(1 << 20, 2 << 20, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the policy tried to grow its memory to 2097152 bytes, past the limit of 1048576"
        );
        assert!(matches!(
            limiter.exceeded,
            Some(CallError::Limit { what: "memory", .. })
        ));
        assert!(limiter.table_growing(0, 20_000, None).is_err());
    }
}
