//! `containerd-shim-wasmvisor-v1`: the containerd runtime v2 shim for
//! runtime `io.containerd.wasmvisor.v1`. Each container is one
//! `wasmvisor run` process, a VM whose guest image, kernel and policies
//! come from the container's rootfs and whose console is the container's
//! stdout (docs/containerd.md).
//!
//! containerd starts the shim with its working directory set to the
//! task's bundle directory (its state directory for this container),
//! where the shim runs wasmvisor too: the VM's control socket is
//! `BUNDLE/control.sock`.

#![forbid(unsafe_code)]

mod bundle;
mod service;

fn main() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == service::PAUSE)
    {
        service::pause();
    }
    containerd_shim::run::<service::Shim>(service::RUNTIME, None);
}
