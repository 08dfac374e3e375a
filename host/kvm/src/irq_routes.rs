//! The VM's GSI routing table and irqfds: how an eventfd a device signals
//! becomes an interrupt in the guest without passing through user space.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so the table is kept
//! here and rewritten in full on each change: the PC irqchip's default
//! routes for GSIs 0-23 (PIC and IOAPIC pins, as KVM installs them with
//! `KVM_CREATE_IRQCHIP`), then one MSI route per GSI handed out from 24
//! up. An irqfd bound to an MSI route injects that message; one bound to
//! an IOAPIC GSI drives the line, and with a resample eventfd KVM lowers
//! it at the guest's EOI and tells the VMM.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::KvmError;

/// GSIs below this are the irqchip's pins; MSI routes start here.
pub const FIRST_MSI_GSI: u32 = 24;
/// The IOAPIC's pins, which are GSIs 0-23.
const IOAPIC_PINS: u32 = 24;
/// KVM's limit on routing entries (`KVM_MAX_IRQ_ROUTES`).
const MAX_ROUTES: usize = 4096;

#[derive(Default)]
struct Table {
    /// GSI → (address, data).
    msi: BTreeMap<u32, (u64, u32)>,
    /// GSIs handed out, with or without a route yet.
    allocated: std::collections::BTreeSet<u32>,
}

/// The GSI routes of a VM with the in-kernel irqchip.
pub struct IrqRoutes {
    fd: Arc<VmFd>,
    table: Mutex<Table>,
}

/// One routing entry, as plain data (KVM's is a C union).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// A pin of the PIC or IOAPIC.
    Irqchip { chip: u32, pin: u32 },
    /// An MSI message.
    Msi { address: u64, data: u32 },
}

fn entry(gsi: u32, route: Route) -> kvm_irq_routing_entry {
    match route {
        Route::Irqchip { chip, pin } => irqchip(gsi, chip, pin),
        Route::Msi { address, data } => msi(gsi, address, data),
    }
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
        },
        ..Default::default()
    }
}

fn msi(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            msi: kvm_irq_routing_msi {
                address_lo: address as u32,
                address_hi: (address >> 32) as u32,
                data,
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

/// The routes `KVM_CREATE_IRQCHIP` installs on x86: GSIs 0-15 go to both
/// the PICs and the IOAPIC, 16-23 to the IOAPIC only.
fn default_routes() -> Vec<(u32, Route)> {
    let mut routes = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        let pic = match gsi {
            0..8 => Some((KVM_IRQCHIP_PIC_MASTER, gsi)),
            8..16 => Some((KVM_IRQCHIP_PIC_SLAVE, gsi - 8)),
            _ => None,
        };
        if let Some((chip, pin)) = pic {
            routes.push((gsi, Route::Irqchip { chip, pin }));
        }
        let (chip, pin) = (KVM_IRQCHIP_IOAPIC, gsi);
        routes.push((gsi, Route::Irqchip { chip, pin }));
    }
    routes
}

/// The whole table: the irqchip's routes, then the MSI ones.
fn all_routes(table: &Table) -> Vec<(u32, Route)> {
    let mut routes = default_routes();
    routes.extend(
        table
            .msi
            .iter()
            .map(|(&gsi, &(address, data))| (gsi, Route::Msi { address, data })),
    );
    routes
}

impl IrqRoutes {
    pub(crate) fn new(fd: Arc<VmFd>) -> IrqRoutes {
        IrqRoutes {
            fd,
            table: Mutex::new(Table::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A GSI for an MSI route, not routed until [`IrqRoutes::set_msi`].
    pub fn allocate(&self) -> Result<u32, KvmError> {
        let mut table = self.lock();
        let gsi = (FIRST_MSI_GSI..)
            .find(|g| !table.allocated.contains(g))
            .expect("GSIs are u32");
        if table.allocated.len() + default_routes().len() >= MAX_ROUTES {
            return Err(KvmError::BadBootState(format!(
                "no GSI left for an MSI route ({MAX_ROUTES} routes at most)"
            )));
        }
        table.allocated.insert(gsi);
        Ok(gsi)
    }

    /// Routes `gsi` (from [`IrqRoutes::allocate`]) to the MSI message
    /// `address`/`data`; an irqfd bound to it injects that message.
    pub fn set_msi(&self, gsi: u32, address: u64, data: u32) -> Result<(), KvmError> {
        let mut table = self.lock();
        if !table.allocated.contains(&gsi) {
            return Err(KvmError::BadBootState(format!(
                "GSI {gsi} was not allocated"
            )));
        }
        if table.msi.get(&gsi) == Some(&(address, data)) {
            return Ok(());
        }
        let old = table.msi.insert(gsi, (address, data));
        let result = self.commit(&table);
        if result.is_err() {
            // Keep the table what KVM has.
            match old {
                Some(old) => table.msi.insert(gsi, old),
                None => table.msi.remove(&gsi),
            };
        }
        result
    }

    /// Gives `gsi` back and drops its route.
    pub fn free(&self, gsi: u32) -> Result<(), KvmError> {
        let mut table = self.lock();
        table.allocated.remove(&gsi);
        if table.msi.remove(&gsi).is_some() {
            return self.commit(&table);
        }
        Ok(())
    }

    /// The MSI routes installed, as (GSI, address, data).
    pub fn msi_routes(&self) -> Vec<(u32, u64, u32)> {
        self.lock()
            .msi
            .iter()
            .map(|(&gsi, &(address, data))| (gsi, address, data))
            .collect()
    }

    fn commit(&self, table: &Table) -> Result<(), KvmError> {
        let entries: Vec<_> = all_routes(table)
            .into_iter()
            .map(|(gsi, route)| entry(gsi, route))
            .collect();
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| KvmError::BadBootState(format!("GSI routing table: {e:?}")))?;
        self.fd
            .set_gsi_routing(&routing)
            .map_err(KvmError::ioctl("KVM_SET_GSI_ROUTING"))
    }

    /// Makes a signal on `fd` raise `gsi` in the kernel.
    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.fd
            .register_irqfd(fd, gsi)
            .map_err(KvmError::ioctl("KVM_IRQFD"))
    }

    /// Like [`IrqRoutes::register_irqfd`] for a level-triggered line:
    /// KVM holds `gsi` high until the guest's EOI, then lowers it and
    /// signals `resample`.
    pub fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<(), KvmError> {
        self.fd
            .register_irqfd_with_resample(fd, resample, gsi)
            .map_err(KvmError::ioctl("KVM_IRQFD"))
    }

    /// Undoes a registration; signals on `fd` stay in it for user space.
    pub fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.fd
            .unregister_irqfd(fd, gsi)
            .map_err(KvmError::ioctl("KVM_IRQFD deassign"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_match_the_pc_irqchip() {
        let routes = default_routes();
        // 16 GSIs on PIC and IOAPIC, 8 on the IOAPIC alone.
        assert_eq!(routes.len(), 16 * 2 + 8);
        let chips = |gsi: u32| -> Vec<(u32, u32)> {
            routes
                .iter()
                .filter(|r| r.0 == gsi)
                .map(|r| match r.1 {
                    Route::Irqchip { chip, pin } => (chip, pin),
                    Route::Msi { .. } => panic!("MSI among the defaults"),
                })
                .collect()
        };
        assert_eq!(
            chips(3),
            [(KVM_IRQCHIP_PIC_MASTER, 3), (KVM_IRQCHIP_IOAPIC, 3)]
        );
        assert_eq!(
            chips(10),
            [(KVM_IRQCHIP_PIC_SLAVE, 2), (KVM_IRQCHIP_IOAPIC, 10)]
        );
        assert_eq!(chips(20), [(KVM_IRQCHIP_IOAPIC, 20)]);
    }

    #[test]
    fn msi_routes_follow_the_defaults() {
        let mut table = Table::default();
        table.msi.insert(25, (0xfee0_0000, 0x41));
        table.msi.insert(24, (0xfee0_1000, 0x40));
        let routes = all_routes(&table);
        assert_eq!(routes.len(), 42);
        assert_eq!(
            routes[40..],
            [
                (
                    24,
                    Route::Msi {
                        address: 0xfee0_1000,
                        data: 0x40
                    }
                ),
                (
                    25,
                    Route::Msi {
                        address: 0xfee0_0000,
                        data: 0x41
                    }
                ),
            ]
        );
    }
}
