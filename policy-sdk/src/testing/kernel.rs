//! [`KernelProfile`]: the guest kernel's symbols and type layouts that a
//! [`FakeHost`](super::FakeHost) answers the `kernel-*` imports from.

use std::collections::BTreeMap;

/// A made-up kernel profile for a [`FakeHost`](super::FakeHost), built
/// entry by entry: symbol addresses (already relocated, as the host
/// reports them for the running guest), type sizes and member offsets.
///
/// ```
/// use wasmvisor_policy_sdk::testing::{FakeHost, KernelProfile};
/// use wasmvisor_policy_sdk::{host, HostError};
///
/// let fake = FakeHost::new();
/// fake.run(|| assert_eq!(host::kernel_symbol("init_task"), Err(HostError::Unsupported)));
/// fake.set_kernel_profile(
///     KernelProfile::new()
///         .symbol("init_task", 0xffff_ffff_8260_0000)
///         .type_size("task_struct", 0x2700)
///         .member("task_struct.pid", 0x970),
/// );
/// fake.run(|| {
///     assert_eq!(host::kernel_symbol("init_task"), Ok(Some(0xffff_ffff_8260_0000)));
///     assert_eq!(host::kernel_symbol("nope"), Ok(None));
///     assert_eq!(
///         host::kernel_symbolize(0xffff_ffff_8260_0970),
///         Ok(Some(("init_task".to_string(), 0x970)))
///     );
///     assert_eq!(host::kernel_type_size("task_struct"), Ok(Some(0x2700)));
///     assert_eq!(host::kernel_member_offset("task_struct.pid"), Ok(Some(0x970)));
/// });
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelProfile {
    symbols: BTreeMap<String, u64>,
    types: BTreeMap<String, u64>,
    members: BTreeMap<String, u64>,
}

impl KernelProfile {
    /// A profile with no symbols and no types.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or moves) symbol `name` at guest-virtual address `addr`.
    pub fn symbol(mut self, name: &str, addr: u64) -> Self {
        self.symbols.insert(name.into(), addr);
        self
    }

    /// Adds (or resizes) struct, union or typedef `name`.
    pub fn type_size(mut self, name: &str, size: u64) -> Self {
        self.types.insert(name.into(), size);
        self
    }

    /// Adds member `path` (`task_struct.pid`, `task_struct.tasks.next`) at
    /// byte `offset` from the start of the struct it names first.
    pub fn member(mut self, path: &str, offset: u64) -> Self {
        self.members.insert(path.into(), offset);
        self
    }

    /// The address of symbol `name`.
    pub(crate) fn lookup(&self, name: &str) -> Option<u64> {
        self.symbols.get(name).copied()
    }

    /// The symbol at or below `addr` and how far `addr` lies past it;
    /// where several symbols share that address, the first by name.
    pub(crate) fn symbolize(&self, addr: u64) -> Option<(String, u64)> {
        self.symbols
            .iter()
            .filter(|&(_, &a)| a <= addr)
            // The highest address; among equals the first name, which
            // `max_by_key` would not give (it keeps the last maximum).
            .fold(
                None,
                |best: Option<(&String, u64)>, (name, &a)| match best {
                    Some((_, b)) if b >= a => best,
                    _ => Some((name, a)),
                },
            )
            .map(|(name, a)| (name.clone(), addr - a))
    }

    /// The size of type `name`.
    pub(crate) fn type_size_of(&self, name: &str) -> Option<u64> {
        self.types.get(name).copied()
    }

    /// The offset of member `path`.
    pub(crate) fn member_offset(&self, path: &str) -> Option<u64> {
        self.members.get(path).copied()
    }
}
