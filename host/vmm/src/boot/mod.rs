//! Getting a guest into memory and ready to run: flat and ELF images
//! (`loader`), Linux kernels (`linux`, `pvh`), the ACPI tables a kernel
//! reads (`acpi`) and the CPUID table every vCPU gets (`cpuid`).

pub mod acpi;
pub(crate) mod cpuid;
pub mod linux;
pub mod loader;
pub mod pvh;
