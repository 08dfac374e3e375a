//! Routes from the policies' subscriptions and the built-in devices'
//! claims, built the same way at start-up and at each hot swap: the
//! routes themselves, and the MMIO ranges the policies watch, which the
//! devices that map memory into the guest must keep trapped.

use std::ops::RangeInclusive;
use std::sync::Arc;

use wasmvisor_exit::{GpaRange, Routes, Subscriptions};

use crate::devices::builtin::BuiltinDevice;

/// What one built-in device claims: port ranges and MMIO ranges.
pub(crate) type Claims = (Vec<RangeInclusive<u16>>, Vec<GpaRange>);

/// The routes for one generation of policies.
pub(crate) struct RoutePlan {
    pub routes: Arc<Routes>,
    /// Every MMIO range a policy subscribes to.
    pub policy_mmio: Vec<GpaRange>,
}

/// Plans the routes for `subs` (by policy slot) in front of the devices'
/// `claims`; the error is one line.
pub(crate) fn plan_routes(subs: &[&Subscriptions], claims: &[Claims]) -> Result<RoutePlan, String> {
    let routes = Routes::build(subs, claims).map_err(|e| e.to_string())?;
    let policy_mmio = subs.iter().flat_map(|s| s.mmio.iter().copied()).collect();
    Ok(RoutePlan {
        routes: Arc::new(routes),
        policy_mmio,
    })
}

impl RoutePlan {
    /// Tells each device which MMIO ranges the policies watch (with the
    /// vCPUs held, at a swap).
    pub(crate) fn tell_devices(&self, builtins: &[Arc<dyn BuiltinDevice>]) {
        for b in builtins {
            b.set_policy_mmio(&self.policy_mmio);
        }
    }
}
