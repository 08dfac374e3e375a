//! The interrupt path of a passed-through function: the device signals an
//! eventfd per vector; the VMM turns each signal into what the guest
//! programmed (the MSI message in the shadow capability, or the INTx
//! line) and hands it to the function's [`InterruptSink`].
//!
//! With an [`IrqBypass`] (KVM irqfds and GSI routes) the eventfds of
//! enabled, unmasked vectors go straight to the hypervisor, and INTx is
//! driven by KVM with a resample eventfd telling the VMM of the guest's
//! EOI; [`Interrupts::sync_routes`] keeps the routes in step with the
//! shadow. Whatever is not routed (masked vectors, or every vector
//! without a bypass) comes through [`Interrupts::poll`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tracing::warn;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use wasmvisor_pci::{ConfigSpace, InterruptSink, Msi, MsiMessage, MsiSignal, MsixEmulation};

use crate::bypass::IrqBypass;
use crate::passthrough::{IrqKind, PassthroughDevice};

/// The eventfds of one function and where their signals go.
pub struct Interrupts {
    pub(crate) config: Arc<Mutex<ConfigSpace>>,
    pub(crate) msi: Option<Msi>,
    pub(crate) msi_fds: Vec<EventFd>,
    /// MSI-X as the guest sees it: the VMM's table, not the device's.
    pub(crate) msix: Option<Mutex<MsixEmulation>>,
    pub(crate) msix_fds: Vec<EventFd>,
    pub(crate) intx_fd: Option<EventFd>,
    /// Signalled by KVM at the guest's EOI of a routed INTx.
    intx_resample: Option<EventFd>,
    device: Arc<dyn PassthroughDevice>,
    sink: Arc<dyn InterruptSink>,
    bypass: Option<Arc<dyn IrqBypass>>,
    /// What each MSI and then each MSI-X vector's eventfd is routed to
    /// now (None: the VMM).
    routed: Mutex<Vec<Option<MsiMessage>>>,
    intx_routed: AtomicBool,
    intx_asserted: AtomicBool,
    /// Interrupts the VMM delivered itself (not through the bypass).
    by_vmm: AtomicU64,
    /// Times a vector was routed through the bypass.
    routes_made: AtomicU64,
}

/// The interrupts a function has, as its shadow and backend allow.
pub(crate) struct Vectors {
    pub msi: Option<Msi>,
    pub msi_vectors: u32,
    pub msix: Option<MsixEmulation>,
    pub msix_vectors: u32,
    pub intx: bool,
}

/// Where a function's interrupts go.
pub(crate) struct Targets {
    pub device: Arc<dyn PassthroughDevice>,
    pub sink: Arc<dyn InterruptSink>,
    pub bypass: Option<Arc<dyn IrqBypass>>,
}

impl Interrupts {
    pub(crate) fn new(
        config: Arc<Mutex<ConfigSpace>>,
        vectors: Vectors,
        targets: Targets,
    ) -> std::io::Result<Interrupts> {
        let Vectors {
            msi,
            msi_vectors,
            msix,
            msix_vectors,
            intx,
        } = vectors;
        let Targets {
            device,
            sink,
            bypass,
        } = targets;
        let eventfds = |n: u32| -> std::io::Result<Vec<EventFd>> {
            (0..n).map(|_| EventFd::new(EFD_NONBLOCK)).collect()
        };
        let msi_fds = eventfds(msi_vectors)?;
        let msix_fds = eventfds(msix_vectors)?;
        let intx_fd = intx.then(|| EventFd::new(EFD_NONBLOCK)).transpose()?;
        let intx_resample = (intx && bypass.is_some())
            .then(|| EventFd::new(EFD_NONBLOCK))
            .transpose()?;
        Ok(Interrupts {
            config,
            msi,
            routed: Mutex::new(vec![None; msi_fds.len() + msix_fds.len()]),
            msi_fds,
            msix: msix.map(Mutex::new),
            msix_fds,
            intx_fd,
            intx_resample,
            device,
            sink,
            bypass,
            intx_routed: AtomicBool::new(false),
            intx_asserted: AtomicBool::new(false),
            by_vmm: AtomicU64::new(0),
            routes_made: AtomicU64::new(0),
        })
    }

    /// True if a bypass takes the function's interrupts.
    pub fn bypassed(&self) -> bool {
        self.bypass.is_some()
    }

    /// Routes INTx through the bypass, if there is one; otherwise (or if
    /// the hypervisor refuses) INTx stays on the VMM's path.
    pub(crate) fn attach_intx(&self) {
        let (Some(bypass), Some(fd), Some(resample)) =
            (&self.bypass, &self.intx_fd, &self.intx_resample)
        else {
            return;
        };
        if self.intx_routed.load(Ordering::Acquire) {
            return;
        }
        match bypass.attach_intx(fd, resample) {
            Ok(()) => {
                self.intx_routed.store(true, Ordering::Release);
                self.routes_made.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => warn!("passthrough INTx stays on the VMM path: {e}"),
        }
    }

    /// Brings the MSI routes in line with the shadow: a vector is routed
    /// while MSI is enabled, the vector is within those the guest enabled
    /// and it is unmasked; routing follows the guest's message.
    pub(crate) fn sync_routes(&self) {
        let Some(bypass) = &self.bypass else { return };
        let wanted = self.wanted_routes();
        let mut routed = self.routed.lock().unwrap_or_else(PoisonError::into_inner);
        let fds = self.msi_fds.iter().chain(&self.msix_fds);
        for (vector, (want, fd)) in wanted.into_iter().zip(fds).enumerate() {
            let now = &mut routed[vector];
            if *now == want {
                continue;
            }
            let result = match want {
                Some(message) => bypass.attach_msi(fd, message),
                None => bypass.detach_msi(fd),
            };
            match result {
                Ok(()) => {
                    if want.is_some() {
                        self.routes_made.fetch_add(1, Ordering::Relaxed);
                    }
                    *now = want;
                }
                Err(e) => {
                    // Unrouted, the vector still works through `poll`.
                    warn!("passthrough interrupt vector {vector} route: {e}");
                    if now.is_some() && want.is_none() {
                        *now = None;
                    }
                }
            }
        }
    }

    /// Where each MSI, then each MSI-X, vector should be routed now.
    fn wanted_routes(&self) -> Vec<Option<MsiMessage>> {
        let config = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wanted: Vec<Option<MsiMessage>> = (0..self.msi_fds.len() as u32)
            .map(|v| {
                let msi = self.msi.filter(|m| m.is_enabled(&config))?;
                (v < msi.vectors(&config) && !msi.is_masked(&config, v))
                    .then(|| msi.message(&config, v))
            })
            .collect();
        let msix = self
            .msix
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner));
        wanted.extend((0..self.msix_fds.len() as u32).map(|v| {
            let msix = msix.as_ref().filter(|m| m.is_enabled(&config))?;
            if msix.is_masked(&config, v) {
                return None;
            }
            msix.message(v)
        }));
        wanted
    }

    /// Takes every route down, so signals come back to the VMM (shutdown,
    /// reset).
    pub(crate) fn detach_all(&self) {
        let Some(bypass) = &self.bypass else { return };
        let mut routed = self.routed.lock().unwrap_or_else(PoisonError::into_inner);
        for (now, fd) in routed
            .iter_mut()
            .zip(self.msi_fds.iter().chain(&self.msix_fds))
        {
            if now.take().is_some() {
                if let Err(e) = bypass.detach_msi(fd) {
                    warn!("passthrough MSI route: {e}");
                }
            }
        }
        if let Some(fd) = &self.intx_fd {
            if self.intx_routed.swap(false, Ordering::AcqRel) {
                if let Err(e) = bypass.detach_intx(fd) {
                    warn!("passthrough INTx route: {e}");
                }
            }
        }
    }

    /// Interrupts the VMM delivered itself: every one without a bypass,
    /// and those of masked or unroutable vectors with one.
    pub fn delivered_by_vmm(&self) -> u64 {
        self.by_vmm.load(Ordering::Relaxed)
    }

    /// Routes made through the bypass (MSI vectors and INTx), counting
    /// each change of a vector's message.
    pub fn routes_made(&self) -> u64 {
        self.routes_made.load(Ordering::Relaxed)
    }

    /// The MSI and MSI-X vectors routed through the bypass now.
    pub fn routed_vectors(&self) -> usize {
        let routed = self.routed.lock().unwrap_or_else(PoisonError::into_inner);
        routed.iter().filter(|r| r.is_some()).count()
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
        for (vector, fd) in self.msix_fds.iter().enumerate() {
            if fd.read().is_ok() {
                found += 1;
                self.signal_msix(vector as u32);
            }
        }
        if let Some(fd) = &self.intx_fd {
            if fd.read().is_ok() {
                found += 1;
                self.set_intx(true);
            }
        }
        // The guest's EOI of a routed INTx: VFIO masked the line when it
        // fired, so unmask it; the device signals again if it still needs
        // service.
        if let Some(fd) = &self.intx_resample {
            if fd.read().is_ok() {
                found += 1;
                if let Err(e) = self.device.unmask_irq(IrqKind::Intx) {
                    warn!("passthrough INTx unmask: {e}");
                }
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
            self.by_vmm.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.sink.send_msi(message) {
                warn!("passthrough MSI vector {vector}: {e}");
            }
        }
    }

    /// A signal on MSI-X vector `vector`: the message the guest put in
    /// the VMM's table, or a pending bit there while it is masked.
    fn signal_msix(&self, vector: u32) {
        let Some(msix) = &self.msix else { return };
        let signal = {
            let config = self.config.lock().unwrap_or_else(PoisonError::into_inner);
            let mut msix = msix.lock().unwrap_or_else(PoisonError::into_inner);
            msix.signal(&config, vector)
        };
        if let MsiSignal::Send(message) = signal {
            self.by_vmm.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.sink.send_msi(message) {
                warn!("passthrough MSI-X vector {vector}: {e}");
            }
        }
    }

    /// Sends what the guest's last write unmasked, MSI and MSI-X.
    pub(crate) fn send_unmasked(&self) {
        let messages = {
            let mut config = self.config.lock().unwrap_or_else(PoisonError::into_inner);
            let mut messages = match self.msi {
                Some(msi) => msi.take_unmasked(&mut config),
                None => Vec::new(),
            };
            if let Some(msix) = &self.msix {
                let mut msix = msix.lock().unwrap_or_else(PoisonError::into_inner);
                messages.extend(msix.take_unmasked(&config));
            }
            messages
        };
        for message in messages {
            self.by_vmm.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.sink.send_msi(message) {
                warn!("passthrough MSI: {e}");
            }
        }
    }

    fn set_intx(&self, asserted: bool) {
        if self.intx_asserted.swap(asserted, Ordering::AcqRel) == asserted {
            return;
        }
        if asserted {
            self.by_vmm.fetch_add(1, Ordering::Relaxed);
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
    pub(crate) fn end_of_intx(&self) {
        if !self.intx_asserted.load(Ordering::Acquire) {
            return;
        }
        self.set_intx(false);
        if let Err(e) = self.device.unmask_irq(IrqKind::Intx) {
            warn!("passthrough INTx unmask: {e}");
        }
    }

    /// True while the INTx line is asserted.
    pub fn intx_asserted(&self) -> bool {
        self.intx_asserted.load(Ordering::Acquire)
    }

    /// Releases INTx and drops anything signalled and not delivered (reset).
    pub(crate) fn clear(&self) {
        for fd in self
            .msi_fds
            .iter()
            .chain(&self.intx_fd)
            .chain(&self.intx_resample)
        {
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
        let fds = self
            .msi_fds
            .iter()
            .chain(&self.msix_fds)
            .chain(&self.intx_fd);
        for fd in fds.chain(&self.intx_resample).chain([&stop]) {
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
