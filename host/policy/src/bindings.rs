//! The generated WIT bindings for world `wasmvisor:policy/policy`: the only
//! place `bindgen!` runs.

wasmtime::component::bindgen!({
    world: "policy",
    path: "../../wit",
    imports: { default: trappable },
});
