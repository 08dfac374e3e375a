//! Plain host-side types of the public API that `wasmvisor-exit` does not
//! already define: a policy's verdict, a CPUID entry, its self-description.

use wasmvisor_exit::Action;

/// A policy's answer to one exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the exit to the next subscriber (finally the default handler).
    Decline,
    /// The policy answers with these actions (still to be validated).
    Handled(Vec<Action>),
}

/// One CPUID table entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidLeaf {
    pub function: u32,
    pub index: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// A policy's self-description, from its `info` export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyInfo {
    pub name: String,
    pub version: String,
    pub description: String,
}
