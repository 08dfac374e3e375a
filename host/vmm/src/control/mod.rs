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
        control: Option<&Path>,
        watch: bool,
    ) -> Result<Services, VmmError> {
        let server = match control {
            Some(path) => Some(server::Server::start(path, Arc::clone(&swap))?),
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
