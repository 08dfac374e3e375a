//! The devices the VMM emulates itself, behind every policy: the trait
//! they share (`builtin`), the 16550 UART (`serial`), the keyboard
//! controller's reset line (`i8042`), QEMU's debug-exit port
//! (`debug_exit`), and the PCI segment with its passthrough BAR mappings
//! (`pci`, `bar_maps`).

pub(crate) mod bar_maps;
pub(crate) mod builtin;
pub(crate) mod debug_exit;
pub(crate) mod i8042;
pub mod pci;
pub(crate) mod serial;
