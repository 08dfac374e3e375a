//! Changing policies from outside a running VM: the control socket and
//! the file watcher, both in front of one [`HotSwap`], and the socket's
//! client.

mod client;
mod protocol;
mod server;
mod watch;

use std::path::Path;
use std::sync::Arc;

use crate::error::VmmError;
use crate::policies::hotswap::HotSwap;
use crate::snapshot::Snapshots;

pub use protocol::VmOp;

/// What the control socket acts on: the policies and the snapshots.
pub(crate) struct Controlled {
    pub swap: Arc<HotSwap>,
    pub snapshots: Arc<Snapshots>,
}

impl Controlled {
    /// Carries out a snapshot, baseline, reset or dump; the reply's
    /// report, or why it failed.
    pub fn vm_op(&self, op: &VmOp) -> Result<serde_json::Value, String> {
        fn value<T: serde::Serialize>(r: Result<T, String>) -> Result<serde_json::Value, String> {
            r.map(|v| serde_json::to_value(v).unwrap_or_default())
        }
        let s = &self.snapshots;
        match op {
            VmOp::Snapshot { dir } => value(s.write_dir(&self.swap, dir)),
            VmOp::Baseline => value(s.with_held(true, |s, held| s.take_baseline(held))),
            VmOp::Reset => value(s.with_held(false, |s, held| s.reset(held))),
            VmOp::Dump { path } => value(s.dump(path)),
        }
    }
}

pub use client::{ClientError, ControlClient};
pub use protocol::{Reply, Request, MAX_REQUEST_BYTES};

/// The control socket and watcher of one VM; stopped when dropped.
pub(crate) struct Services {
    _server: Option<server::Server>,
    _watcher: Option<watch::Watcher>,
}

impl Services {
    pub fn start(
        swap: Arc<HotSwap>,
        snapshots: Arc<Snapshots>,
        control: Option<&Path>,
        watch: bool,
    ) -> Result<Services, VmmError> {
        let server = match control {
            Some(path) => Some(server::Server::start(
                path,
                Arc::new(Controlled {
                    swap: Arc::clone(&swap),
                    snapshots,
                }),
            )?),
            None => None,
        };
        let watcher =
            if watch {
                Some(watch::Watcher::start(swap).map_err(|e| {
                    VmmError::Engine(format!("cannot start the policy watcher: {e}"))
                })?)
            } else {
                None
            };
        Ok(Services {
            _server: server,
            _watcher: watcher,
        })
    }
}
