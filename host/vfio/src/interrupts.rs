//! The interrupt path of a passed-through function: the device signals an
//! eventfd per vector; the VMM turns each signal into what the guest
//! programmed (the MSI message in the shadow capability, or the INTx
//! line) and hands it to the function's [`InterruptSink`].
//!
//! This is the path without KVM's help, so every interrupt is visible to
//! the VMM and its policies. A VMM may instead register the same eventfds
//! as irqfds with MSI routes; then the guest's MSI programming has to be
//! mirrored into the routes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tracing::warn;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use wasmvisor_pci::{ConfigSpace, InterruptSink, Msi, MsiSignal};

use crate::passthrough::{IrqKind, PassthroughDevice};

/// The eventfds of one function and where their signals go.
pub struct Interrupts {
    pub(crate) config: Arc<Mutex<ConfigSpace>>,
    pub(crate) msi: Option<Msi>,
    pub(crate) msi_fds: Vec<EventFd>,
    pub(crate) intx_fd: Option<EventFd>,
    sink: Arc<dyn InterruptSink>,
    intx_asserted: AtomicBool,
}

impl Interrupts {
    pub(crate) fn new(
        config: Arc<Mutex<ConfigSpace>>,
        msi: Option<Msi>,
        msi_vectors: u32,
        intx: bool,
        sink: Arc<dyn InterruptSink>,
    ) -> std::io::Result<Interrupts> {
        let msi_fds = (0..msi_vectors)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<_, _>>()?;
        let intx_fd = intx.then(|| EventFd::new(EFD_NONBLOCK)).transpose()?;
        Ok(Interrupts {
            config,
            msi,
            msi_fds,
            intx_fd,
            sink,
            intx_asserted: AtomicBool::new(false),
        })
    }

    /// Delivers whatever the device signalled since the last call, without
    /// blocking; returns how many signals it found. A masked MSI vector
    /// becomes pending in the shadow and goes out when the guest unmasks
    /// it.
    pub fn poll(&self) -> usize {
        let mut found = 0;
        for (vector, fd) in self.msi_fds.iter().enumerate() {
            if fd.read().is_ok() {
                found += 1;
                self.signal_msi(vector as u32);
            }
        }
        if let Some(fd) = &self.intx_fd {
            if fd.read().is_ok() {
                found += 1;
                self.set_intx(true);
            }
        }
        found
    }

    fn signal_msi(&self, vector: u32) {
        let Some(msi) = self.msi else { return };
        let signal = {
            let mut config = self.config.lock().unwrap_or_else(PoisonError::into_inner);
            msi.signal(&mut config, vector)
        };
        if let MsiSignal::Send(message) = signal {
            if let Err(e) = self.sink.send_msi(message) {
                warn!("passthrough MSI vector {vector}: {e}");
            }
        }
    }

    pub(crate) fn send_unmasked(&self) {
        let Some(msi) = self.msi else { return };
        let messages = {
            let mut config = self.config.lock().unwrap_or_else(PoisonError::into_inner);
            msi.take_unmasked(&mut config)
        };
        for message in messages {
            if let Err(e) = self.sink.send_msi(message) {
                warn!("passthrough MSI: {e}");
            }
        }
    }

    fn set_intx(&self, asserted: bool) {
        if self.intx_asserted.swap(asserted, Ordering::AcqRel) == asserted {
            return;
        }
        if let Err(e) = self.sink.set_intx(asserted) {
            warn!("passthrough INTx: {e}");
        }
    }

    /// After a guest access to the device: releases INTx and unmasks it on
    /// the device, which signals again if it still needs service. VFIO
    /// masks INTx each time it fires, and without KVM's resample eventfd
    /// the VMM cannot see the guest's EOI, so any access of the guest's
    /// driver to the device stands for it (as QEMU does on its slow path).
    pub(crate) fn end_of_intx(&self, device: &dyn PassthroughDevice) {
        if !self.intx_asserted.load(Ordering::Acquire) {
            return;
        }
        self.set_intx(false);
        if let Err(e) = device.unmask_irq(IrqKind::Intx) {
            warn!("passthrough INTx unmask: {e}");
        }
    }

    /// True while the INTx line is asserted.
    pub fn intx_asserted(&self) -> bool {
        self.intx_asserted.load(Ordering::Acquire)
    }

    /// Releases INTx and drops anything signalled and not delivered (reset).
    pub(crate) fn clear(&self) {
        for fd in self.msi_fds.iter().chain(&self.intx_fd) {
            let _ = fd.read();
        }
        self.set_intx(false);
    }

    /// Delivers interrupts on a thread of their own until the returned
    /// handle is stopped or dropped.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<InterruptThread> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        let watch = |fd: &EventFd| {
            epoll.ctl(
                ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(fd),
                EpollEvent::new(EventSet::IN, 0),
            )
        };
        for fd in self.msi_fds.iter().chain(&self.intx_fd).chain([&stop]) {
            watch(fd)?;
        }
        let thread_stop = stop.try_clone()?;
        let interrupts = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name("vfio-irq".into())
            .spawn(move || {
                let mut events = [EpollEvent::default(); 8];
                loop {
                    match epoll.wait(-1, &mut events) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            warn!("passthrough interrupt thread: {e}");
                            return;
                        }
                    }
                    if thread_stop.read().is_ok() {
                        return;
                    }
                    interrupts.poll();
                }
            })?;
        Ok(InterruptThread {
            stop,
            handle: Some(handle),
        })
    }
}

/// A thread delivering one function's interrupts; stopped on drop.
pub struct InterruptThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl InterruptThread {
    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = self.stop.write(1);
            let _ = handle.join();
        }
    }
}

impl Drop for InterruptThread {
    fn drop(&mut self) {
        self.stop();
    }
}
