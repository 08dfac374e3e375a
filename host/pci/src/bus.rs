//! The PCI segment: bus 0 with up to 32 devices (function 0 of each), the
//! host bridge at 00:00.0, both configuration mechanisms, and the routing
//! of BAR accesses to the device whose enabled BAR decodes them.
//!
//! Every access is decoded into a [`Target`] first and performed second,
//! so that the VMM can show a policy what an access reaches (and let it
//! allow, deny or rewrite it) between the two steps. Functions other than
//! 0 and buses other than 0 are absent: configuration reads return
//! all-ones, which is how a guest learns that nothing is there.

use std::fmt;

use thiserror::Error;

use crate::all_ones;
use crate::bar::{AddressSpace, AllocError, BarAllocator, BarRegion};
use crate::bdf::Bdf;
use crate::config::{reg, Command, IntxPin};
use crate::device::{GuestMapping, PciDevice};
use crate::ecam;
use crate::host_bridge::{ConfigAddress, HostBridge, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT};
use crate::layout::{PciLayout, Window};

/// Devices on the bus, the host bridge included.
pub const MAX_DEVICES: usize = 32;

/// The interrupt controller inputs INTA#-INTD# are wired to by default:
/// IOAPIC inputs 16-19, above the ISA lines, so PCI interrupts share no
/// line with a legacy device.
pub const DEFAULT_INTX_LINES: [u32; 4] = [16, 17, 18, 19];

/// An enabled BAR the bus routes accesses to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRoute {
    /// The device number.
    pub device: u8,
    /// The BAR index.
    pub bar: u8,
    /// Memory or ports.
    pub space: AddressSpace,
    /// The BAR's address.
    pub base: u64,
    /// Its size.
    pub size: u64,
}

impl BarRoute {
    fn window(&self) -> Window {
        Window::new(self.base, self.size)
    }
}

/// What an access reaches, once decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The mechanism #1 address register (a dword access to 0xCF8).
    ConfigAddress,
    /// A configuration register of a function, which may be absent.
    Config {
        /// The function.
        bdf: Bdf,
        /// The byte offset in its configuration space.
        offset: u16,
    },
    /// A BAR of a device; the access lies wholly inside it.
    Bar {
        /// The device number.
        device: u8,
        /// The BAR index.
        bar: u8,
        /// The byte offset inside the BAR.
        offset: u64,
    },
    /// Claimed by the bus but answered by nothing: reads return all-ones,
    /// writes are dropped. Malformed accesses (a configuration access of
    /// 8 bytes or across a dword, one that runs off the end of a BAR, the
    /// data ports while the address register is disabled) end here.
    MasterAbort,
}

/// Why a device could not join the bus.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BusError {
    /// Device numbers go from 0 to 31.
    #[error("there is no device slot {slot} on a PCI bus (0 to 31)")]
    NoSuchSlot {
        /// The slot asked for.
        slot: u8,
    },
    /// The slot holds a device already.
    #[error("PCI slot {slot} is taken")]
    SlotTaken {
        /// The slot asked for.
        slot: u8,
    },
    /// All 32 slots are taken.
    #[error("the PCI bus is full: all 32 slots are taken")]
    Full,
}

/// Bus 0 of segment 0.
pub struct PciBus {
    devices: Vec<Option<Box<dyn PciDevice>>>,
    config_address: ConfigAddress,
    layout: PciLayout,
    intx_lines: [u32; 4],
    routes: Vec<BarRoute>,
    generation: u64,
}

impl fmt::Debug for PciBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slots: Vec<usize> = (0..MAX_DEVICES)
            .filter(|&s| self.devices[s].is_some())
            .collect();
        f.debug_struct("PciBus")
            .field("slots", &slots)
            .field("config_address", &self.config_address)
            .field("layout", &self.layout)
            .field("routes", &self.routes)
            .finish()
    }
}

impl PciBus {
    /// A bus with the host bridge at 00:00.0, decoding ECAM in
    /// `layout.ecam` and placing BARs in its other windows. The VMM checks
    /// the layout against guest RAM first ([`PciLayout::check`]).
    pub fn new(layout: PciLayout) -> PciBus {
        let mut devices: Vec<Option<Box<dyn PciDevice>>> = Vec::new();
        devices.resize_with(MAX_DEVICES, || None);
        devices[0] = Some(Box::new(HostBridge::new()));
        PciBus {
            devices,
            config_address: ConfigAddress::default(),
            layout,
            intx_lines: DEFAULT_INTX_LINES,
            routes: Vec::new(),
            generation: 0,
        }
    }

    /// Wires INTA#-INTD# of slot 0 to `lines` instead of
    /// [`DEFAULT_INTX_LINES`]; other slots rotate them (see
    /// [`PciBus::intx_line`]).
    pub fn with_intx_lines(mut self, lines: [u32; 4]) -> PciBus {
        self.intx_lines = lines;
        self
    }

    /// The interrupt controller input `pin` of the device in `slot` drives:
    /// the usual rotation, so that the INTA# of neighbouring slots land on
    /// different lines. The bus writes it into the device's interrupt line
    /// register, as firmware would.
    pub fn intx_line(&self, slot: u8, pin: IntxPin) -> u32 {
        rotate(self.intx_lines, slot, pin)
    }

    /// The windows the bus decodes and places BARs in: the VMM routes the
    /// ECAM and BAR windows' exits, and [`CONFIG_PORTS`](crate::CONFIG_PORTS)
    /// and the I/O window's, to the bus.
    pub fn layout(&self) -> &PciLayout {
        &self.layout
    }

    /// The lowest free slot, for a VMM that must know a device's slot (and
    /// so its INTx line) before building it.
    pub fn free_slot(&self) -> Option<u8> {
        (0..MAX_DEVICES as u8).find(|&s| self.devices[usize::from(s)].is_none())
    }

    /// Puts `device` in the lowest free slot and returns its address.
    pub fn add(&mut self, device: Box<dyn PciDevice>) -> Result<Bdf, BusError> {
        let slot = self.free_slot().ok_or(BusError::Full)?;
        self.add_at(slot, device)
    }

    /// Puts `device` in `slot` and returns its address.
    pub fn add_at(&mut self, slot: u8, mut device: Box<dyn PciDevice>) -> Result<Bdf, BusError> {
        let bdf = Bdf::slot(slot).ok_or(BusError::NoSuchSlot { slot })?;
        let entry = &mut self.devices[usize::from(slot)];
        if entry.is_some() {
            return Err(BusError::SlotTaken { slot });
        }
        Self::write_intx_line(self.intx_lines, slot, device.as_mut());
        *entry = Some(device);
        self.refresh_slot(slot);
        Ok(bdf)
    }

    fn write_intx_line(lines: [u32; 4], slot: u8, device: &mut dyn PciDevice) {
        let pin = device.config_read(reg::INTERRUPT_PIN, 1) as u8;
        if let Some(pin) = IntxPin::from_register(pin) {
            device.config_write(reg::INTERRUPT_LINE, 1, rotate(lines, slot, pin));
        }
    }

    /// Gives every unassigned BAR an address in the layout's windows,
    /// largest first so that alignment wastes least, by writing the BAR
    /// registers as firmware does. BARs that have an address keep it and
    /// are avoided, so calling this again (after adding a device, or after
    /// a reset) only places what is new. Decoding stays off until the guest
    /// enables it in the command register. If a window is full, the BARs
    /// placed before keep their addresses.
    pub fn assign_bars(&mut self) -> Result<(), AllocError> {
        let mut allocator = BarAllocator::new(&self.layout);
        let mut todo: Vec<(u8, BarRegion)> = Vec::new();
        for (slot, device) in self.slots() {
            for region in device.bar_regions() {
                if region.address == 0 {
                    todo.push((slot, region));
                } else {
                    allocator.reserve(&region.bar, region.address);
                }
            }
        }
        // Stable: equal sizes keep slot and index order.
        todo.sort_by_key(|(_, r)| std::cmp::Reverse(r.bar.size()));
        for (slot, region) in todo {
            let address = allocator.allocate(&region.bar)?;
            let Some(device) = self.devices[usize::from(slot)].as_mut() else {
                continue;
            };
            let register = reg::BAR0 + 4 * u16::from(region.index);
            device.config_write(register, 4, address as u32);
            if region.bar.is_64bit() {
                device.config_write(register + 4, 4, (address >> 32) as u32);
            }
            self.refresh_slot(slot);
        }
        Ok(())
    }

    /// Resets every device and the address register, as a machine reset
    /// does. BARs return to unassigned; call [`PciBus::assign_bars`] again
    /// before the guest restarts.
    pub fn reset(&mut self) {
        self.config_address = ConfigAddress::default();
        let lines = self.intx_lines;
        for slot in 0..MAX_DEVICES as u8 {
            if let Some(device) = self.device_mut(slot) {
                device.reset();
                Self::write_intx_line(lines, slot, device);
                self.refresh_slot(slot);
            }
        }
    }

    /// The BARs accesses are routed to now.
    pub fn routes(&self) -> &[BarRoute] {
        &self.routes
    }

    /// Where the devices' [`DirectMap`]s are decoded now: the parts of
    /// memory BARs with memory decoding on and an address assigned, which
    /// the VMM maps as memslots. Follows [`PciBus::generation`].
    pub fn direct_maps(&self) -> Vec<GuestMapping> {
        let mut maps = Vec::new();
        for (slot, device) in self.slots() {
            let parts = device.direct_maps();
            if parts.is_empty() {
                continue;
            }
            let decoded = self
                .routes
                .iter()
                .filter(|r| r.device == slot && r.space == AddressSpace::Memory);
            for route in decoded {
                maps.extend(
                    parts
                        .iter()
                        .filter(|p| p.bar == route.bar)
                        .filter(|p| {
                            p.offset
                                .checked_add(p.size)
                                .is_some_and(|e| e <= route.size)
                        })
                        .map(|p| GuestMapping {
                            gpa: route.base + p.offset,
                            size: p.size,
                            host_addr: p.host_addr,
                        }),
                );
            }
        }
        maps
    }

    /// Counts the changes to [`PciBus::routes`], so that the VMM can tell
    /// when to remap (passthrough BARs are memslots that must follow the
    /// guest's programming).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Decodes a port access of `size` bytes; `None` if the bus does not
    /// claim the port.
    pub fn decode_pio(&self, port: u16, size: u8) -> Option<Target> {
        let address_ports = CONFIG_ADDRESS_PORT..CONFIG_DATA_PORT;
        let data_ports = CONFIG_DATA_PORT..=CONFIG_DATA_PORT + 3;
        if address_ports.contains(&port) {
            // Only whole-dword accesses reach the address register; byte
            // accesses at 0xCF8-0xCFB belong to mechanism #2, which a
            // guest probes for and must not find.
            return Some(if port == CONFIG_ADDRESS_PORT && size == 4 {
                Target::ConfigAddress
            } else {
                Target::MasterAbort
            });
        }
        if data_ports.contains(&port) {
            let lane = (port - CONFIG_DATA_PORT) as u8;
            if !matches!(size, 1 | 2 | 4) || lane + size > 4 {
                return Some(Target::MasterAbort);
            }
            return Some(match self.config_address.decode(lane) {
                Some((bdf, offset)) => Target::Config { bdf, offset },
                None => Target::MasterAbort,
            });
        }
        self.decode_bar(AddressSpace::Io, u64::from(port), size)
    }

    /// Decodes a memory access of `size` bytes at `gpa`; `None` if the bus
    /// does not claim the address.
    pub fn decode_mmio(&self, gpa: u64, size: u8) -> Option<Target> {
        let ecam = self.layout.ecam;
        if ecam.contains(gpa) {
            let offset = gpa - ecam.base;
            // PCI Express forbids configuration requests wider than a
            // dword or crossing one.
            if !matches!(size, 1 | 2 | 4) || (offset & 3) + u64::from(size) > 4 {
                return Some(Target::MasterAbort);
            }
            return Some(match ecam::decode(offset) {
                Some(a) => Target::Config {
                    bdf: a.bdf,
                    offset: a.register,
                },
                None => Target::MasterAbort,
            });
        }
        self.decode_bar(AddressSpace::Memory, gpa, size)
    }

    /// The first enabled BAR of `space` holding `addr`. Overlapping BARs
    /// are the guest's mistake; the lowest slot wins.
    fn decode_bar(&self, space: AddressSpace, addr: u64, size: u8) -> Option<Target> {
        let route = self
            .routes
            .iter()
            .find(|r| r.space == space && r.window().contains(addr))?;
        let offset = addr - route.base;
        let inside = matches!(size, 1 | 2 | 4 | 8) && offset + u64::from(size) <= route.size;
        Some(if inside {
            Target::Bar {
                device: route.device,
                bar: route.bar,
                offset,
            }
        } else {
            Target::MasterAbort
        })
    }

    /// Performs a read of `size` bytes at a decoded target.
    pub fn read(&mut self, target: Target, size: u8) -> u64 {
        match target {
            Target::ConfigAddress => u64::from(self.config_address.value()),
            Target::Config { bdf, offset } => u64::from(self.config_read(bdf, offset, size)),
            Target::Bar {
                device,
                bar,
                offset,
            } => match self.device_mut(device) {
                Some(d) => d.bar_read(bar, offset, size),
                None => all_ones(size),
            },
            Target::MasterAbort => all_ones(size),
        }
    }

    /// Performs a write of the low `size` bytes of `value` at a decoded
    /// target.
    pub fn write(&mut self, target: Target, size: u8, value: u64) {
        match target {
            Target::ConfigAddress => self.config_address = ConfigAddress::new(value as u32),
            Target::Config { bdf, offset } => self.config_write(bdf, offset, size, value as u32),
            Target::Bar {
                device,
                bar,
                offset,
            } => {
                if let Some(d) = self.device_mut(device) {
                    d.bar_write(bar, offset, size, value);
                }
            }
            Target::MasterAbort => {}
        }
    }

    /// A port read; `None` if the bus does not claim the port.
    pub fn pio_read(&mut self, port: u16, size: u8) -> Option<u32> {
        let target = self.decode_pio(port, size)?;
        Some(self.read(target, size) as u32)
    }

    /// A port write; false if the bus does not claim the port.
    pub fn pio_write(&mut self, port: u16, size: u8, value: u32) -> bool {
        self.decode_pio(port, size)
            .map(|t| self.write(t, size, value.into()))
            .is_some()
    }

    /// A memory read; `None` if the bus does not claim the address.
    pub fn mmio_read(&mut self, gpa: u64, size: u8) -> Option<u64> {
        let target = self.decode_mmio(gpa, size)?;
        Some(self.read(target, size))
    }

    /// A memory write; false if the bus does not claim the address.
    pub fn mmio_write(&mut self, gpa: u64, size: u8, value: u64) -> bool {
        self.decode_mmio(gpa, size)
            .map(|t| self.write(t, size, value))
            .is_some()
    }

    /// Reads a function's configuration space; all-ones if it is absent.
    pub fn config_read(&mut self, bdf: Bdf, offset: u16, size: u8) -> u32 {
        match self.function_mut(bdf) {
            Some(d) => d.config_read(offset, size),
            None => all_ones(size) as u32,
        }
    }

    /// Writes a function's configuration space (dropped if it is absent),
    /// then re-routes its BARs, since the write may have moved or enabled
    /// one.
    pub fn config_write(&mut self, bdf: Bdf, offset: u16, size: u8, value: u32) {
        if let Some(d) = self.function_mut(bdf) {
            d.config_write(offset, size, value);
            self.refresh_slot(bdf.device());
        }
    }

    fn function_mut(&mut self, bdf: Bdf) -> Option<&mut (dyn PciDevice + 'static)> {
        if bdf.bus() != 0 || bdf.function() != 0 {
            return None;
        }
        self.device_mut(bdf.device())
    }

    fn device_mut(&mut self, slot: u8) -> Option<&mut (dyn PciDevice + 'static)> {
        self.devices.get_mut(usize::from(slot))?.as_deref_mut()
    }

    fn slots(&self) -> impl Iterator<Item = (u8, &dyn PciDevice)> {
        self.devices
            .iter()
            .enumerate()
            .filter_map(|(s, d)| Some((s as u8, d.as_deref()?)))
    }

    /// Rebuilds the routes of the device in `slot` from its BARs and
    /// command register. Unassigned BARs and BARs that wrap around
    /// (mid-sizing) are left out. Only this device is asked: for a
    /// passthrough device every question may be a system call.
    fn refresh_slot(&mut self, slot: u8) {
        let mut routes = Vec::new();
        if let Some(device) = self.device_mut(slot) {
            let command = Command(device.config_read(reg::COMMAND, 2) as u16);
            for region in device.bar_regions() {
                let space = region.bar.space();
                let decodes = match space {
                    AddressSpace::Memory => command.memory_space(),
                    AddressSpace::Io => command.io_space(),
                };
                let size = region.bar.size();
                if !decodes || region.address == 0 || region.address.checked_add(size).is_none() {
                    continue;
                }
                routes.push(BarRoute {
                    device: slot,
                    bar: region.index,
                    space,
                    base: region.address,
                    size,
                });
            }
        }
        let old = self.routes.iter().filter(|r| r.device == slot);
        if !old.eq(routes.iter()) {
            self.routes.retain(|r| r.device != slot);
            // Kept in slot order, which is the order decoding tries them.
            let at = self.routes.partition_point(|r| r.device < slot);
            self.routes.splice(at..at, routes);
            self.generation += 1;
        }
    }
}

/// The line `pin` of `slot` drives: slot 0's INTA# on the first line,
/// each further slot or pin one line on.
fn rotate(lines: [u32; 4], slot: u8, pin: IntxPin) -> u32 {
    lines[usize::from((slot % 4 + pin.index()) % 4)]
}

#[cfg(test)]
mod tests;
