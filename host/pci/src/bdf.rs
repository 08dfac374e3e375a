//! Guest PCI addresses: bus, device and function within segment 0.

use std::fmt;

/// A function's address on the guest's segment 0: bus, device (0-31) and
/// function (0-7). Both configuration mechanisms decode to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf {
    bus: u8,
    device: u8,
    function: u8,
}

impl Bdf {
    /// The host bridge's address, 00:00.0.
    pub const HOST_BRIDGE: Bdf = Bdf {
        bus: 0,
        device: 0,
        function: 0,
    };

    /// The address `bus:device.function`; `None` if `device` is above 31 or
    /// `function` above 7.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Bdf> {
        if device > 31 || function > 7 {
            return None;
        }
        Some(Bdf {
            bus,
            device,
            function,
        })
    }

    /// Function 0 of `device` on bus 0, the only functions the bus holds;
    /// `None` if `device` is above 31.
    pub const fn slot(device: u8) -> Option<Bdf> {
        Bdf::new(0, device, 0)
    }

    /// The bus number.
    pub const fn bus(self) -> u8 {
        self.bus
    }

    /// The device number, 0-31.
    pub const fn device(self) -> u8 {
        self.device
    }

    /// The function number, 0-7.
    pub const fn function(self) -> u8 {
        self.function
    }

    /// Builds the address from the 16-bit routing ID both mechanisms carry:
    /// bus in bits 15:8, device in 7:3, function in 2:0.
    pub const fn from_routing_id(id: u16) -> Bdf {
        Bdf {
            bus: (id >> 8) as u8,
            device: ((id >> 3) & 0x1f) as u8,
            function: (id & 0x7) as u8,
        }
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_devices_and_functions_are_refused() {
        assert!(Bdf::new(0, 32, 0).is_none());
        assert!(Bdf::new(0, 0, 8).is_none());
        assert!(Bdf::slot(31).is_some());
        assert!(Bdf::slot(32).is_none());
    }

    #[test]
    fn the_routing_id_splits_into_bus_device_function() {
        let bdf = Bdf::from_routing_id(0x12fd);
        assert_eq!((bdf.bus(), bdf.device(), bdf.function()), (0x12, 0x1f, 5));
        assert_eq!(bdf.to_string(), "12:1f.5");
        assert_eq!(Bdf::HOST_BRIDGE.to_string(), "00:00.0");
    }
}
