//! The host bridge at 00:00.0, and the register behind configuration
//! mechanism #1: the dword at port 0xCF8 that says which function and
//! register the data ports 0xCFC-0xCFF reach.

use std::ops::RangeInclusive;

use crate::all_ones;
use crate::bar::BarRegion;
use crate::bdf::Bdf;
use crate::config::{ClassCode, ConfigSpace, Header};
use crate::device::PciDevice;
use crate::VENDOR_ID;

/// The configuration address register's port.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// The first configuration data port; 0xCFD-0xCFF reach bytes 1-3 of the
/// addressed dword.
pub const CONFIG_DATA_PORT: u16 = 0xcfc;
/// Every port of mechanism #1, for the VMM to route to the bus.
pub const CONFIG_PORTS: RangeInclusive<u16> = CONFIG_ADDRESS_PORT..=CONFIG_DATA_PORT + 3;
/// The host bridge's device ID (under [`VENDOR_ID`]).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0001;

/// The value of the configuration address register (0xCF8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigAddress(u32);

impl ConfigAddress {
    /// Bit 31: data port accesses reach configuration space.
    pub const ENABLE: u32 = 1 << 31;
    /// The bits that hold a value: enable, bus (23:16), device (15:11),
    /// function (10:8) and dword register (7:2). Bits 30:24 are reserved,
    /// and bits 1:0 read zero so that the register always names a dword.
    const WRITABLE: u32 = Self::ENABLE | 0x00ff_fffc;

    /// The register after a guest writes `value` to it.
    pub fn new(value: u32) -> ConfigAddress {
        ConfigAddress(value & Self::WRITABLE)
    }

    /// What a guest reads back.
    pub fn value(self) -> u32 {
        self.0
    }

    /// True if the data ports reach configuration space.
    pub fn enabled(self) -> bool {
        self.0 & Self::ENABLE != 0
    }

    /// The function addressed.
    pub fn bdf(self) -> Bdf {
        Bdf::from_routing_id((self.0 >> 8) as u16)
    }

    /// The dword-aligned register offset, 0-0xFC.
    pub fn register(self) -> u16 {
        (self.0 & 0xfc) as u16
    }

    /// The function and byte offset an access to data port
    /// `CONFIG_DATA_PORT + lane` reaches; `None` while disabled, when the
    /// data ports read all-ones and drop writes.
    pub fn decode(self, lane: u8) -> Option<(Bdf, u16)> {
        self.enabled()
            .then(|| (self.bdf(), self.register() + u16::from(lane & 0x3)))
    }
}

/// The host bridge: the function at 00:00.0 that a guest expects to find
/// first. It has no BARs and no interrupts; its configuration space only
/// identifies it.
#[derive(Debug, Clone)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    /// A host bridge with wasmvisor's IDs.
    pub fn new() -> HostBridge {
        HostBridge {
            config: ConfigSpace::new(&Header {
                vendor_id: VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                revision_id: 0,
                class: ClassCode::HOST_BRIDGE,
                subsystem_vendor_id: VENDOR_ID,
                subsystem_id: HOST_BRIDGE_DEVICE_ID,
                interrupt_pin: None,
                multifunction: false,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        HostBridge::new()
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        self.config.read(offset, size)
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        self.config.write(offset, size, value);
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        Vec::new()
    }

    fn bar_read(&mut self, _bar: u8, _offset: u64, size: u8) -> u64 {
        all_ones(size)
    }

    fn bar_write(&mut self, _bar: u8, _offset: u64, _size: u8, _value: u64) {}

    fn reset(&mut self) {
        self.config.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_register_keeps_only_defined_bits() {
        let a = ConfigAddress::new(0xffff_ffff);
        assert_eq!(a.value(), 0x80ff_fffc);
        // Linux's probe for mechanism #1 reads back exactly what it wrote.
        assert_eq!(ConfigAddress::new(0x8000_0000).value(), 0x8000_0000);
    }

    #[test]
    fn the_address_names_bus_device_function_and_dword() {
        // Enable, bus 0, device 3, function 1, register 0x3d (unaligned).
        let a = ConfigAddress::new(0x8000_0000 | 3 << 11 | 1 << 8 | 0x3d);
        assert!(a.enabled());
        assert_eq!(a.bdf(), Bdf::new(0, 3, 1).unwrap());
        assert_eq!(a.register(), 0x3c);
        let b = ConfigAddress::new(0x8012_f810);
        assert_eq!(b.bdf(), Bdf::new(0x12, 31, 0).unwrap());
        assert_eq!(b.register(), 0x10);
    }

    #[test]
    fn data_port_lanes_reach_the_bytes_of_the_dword() {
        let a = ConfigAddress::new(0x8000_0000 | 2 << 11 | 0x04);
        let dev = Bdf::slot(2).unwrap();
        assert_eq!(a.decode(0), Some((dev, 0x04)));
        assert_eq!(a.decode(1), Some((dev, 0x05)));
        assert_eq!(a.decode(2), Some((dev, 0x06)));
        assert_eq!(a.decode(3), Some((dev, 0x07)));
    }

    #[test]
    fn without_the_enable_bit_nothing_is_addressed() {
        let a = ConfigAddress::new(2 << 11 | 0x04);
        assert!(!a.enabled());
        assert_eq!(a.decode(0), None);
        assert_eq!(ConfigAddress::default().decode(0), None);
    }

    #[test]
    fn the_host_bridge_identifies_itself_and_has_no_bars() {
        let mut hb = HostBridge::new();
        assert_eq!(hb.config_read(0, 4), 0x0001_5741);
        assert_eq!(hb.config_read(0x08, 4), 0x0600_0000);
        assert_eq!(hb.config_read(0x0e, 1), 0);
        hb.config_write(0x10, 4, 0xffff_ffff);
        assert_eq!(hb.config_read(0x10, 4), 0);
        assert!(hb.bar_regions().is_empty());
        assert_eq!(hb.bar_read(0, 0, 4), 0xffff_ffff);
    }
}
