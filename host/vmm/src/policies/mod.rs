//! The policies' lifecycle in a running VM: the per-vCPU policy slot and
//! its health (`slot`), loading a set of policies (`policy_set`), what
//! each protected (`ledger`), the sandbox settings (`sandbox`), observers
//! that watch without holding the vCPU (`observer`), holding
//! every vCPU at an exit boundary (`quiesce`) and hot swap (`hotswap`).

pub mod hotswap;
pub(crate) mod ledger;
pub mod observer;
pub(crate) mod policy_set;
pub(crate) mod quiesce;
pub(crate) mod routing;
pub mod sandbox;
pub(crate) mod slot;
