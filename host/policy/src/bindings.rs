//! The generated WIT bindings for world `wasmvisor:policy/quick-policy`
//! (world `policy` plus the optional `quick-handler` export): the only
//! place `bindgen!` runs. The host looks the two exported interfaces up
//! one by one (`image.rs`), since only `handler` is required.

wasmtime::component::bindgen!({
    world: "quick-policy",
    path: "../../wit",
    imports: { default: trappable },
    // Recordings (`record.rs`) store exits, verdicts and import calls in
    // these types' serde form.
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

/// Serde for WIT `flags` types, which `additional_derives` does not reach:
/// a list of the names of the flags that are set, as in the WIT.
macro_rules! flags_serde {
    ($ty:ty, [$($flag:ident = $name:literal),* $(,)?]) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut names: Vec<&str> = Vec::new();
                $(if self.contains(<$ty>::$flag) { names.push($name); })*
                names.serialize(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let names: Vec<String> = Vec::deserialize(d)?;
                let mut out = <$ty>::empty();
                for n in &names {
                    out |= match n.as_str() {
                        $($name => <$ty>::$flag,)*
                        other => {
                            return Err(serde::de::Error::custom(format!(
                                "unknown flag `{other}`"
                            )))
                        }
                    };
                }
                Ok(out)
            }
        }
    };
}

flags_serde!(
    wasmvisor::policy::types::EventSet,
    [
        HLT = "hlt",
        SHUTDOWN = "shutdown",
        DEBUG = "debug",
        MEM_VIOLATION = "mem-violation",
    ]
);

flags_serde!(
    wasmvisor::policy::types::Capabilities,
    [
        SET_REGISTERS = "set-registers",
        WRITE_MEMORY = "write-memory",
        PROTECT_MEMORY = "protect-memory",
        DEBUG = "debug",
        STOP_VM = "stop-vm",
    ]
);

#[cfg(test)]
mod tests {
    use super::wasmvisor::policy::types::{Capabilities, EventSet};

    #[test]
    fn flags_round_trip_as_lists_of_names() {
        let c = Capabilities::DEBUG | Capabilities::STOP_VM;
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"["debug","stop-vm"]"#);
        assert_eq!(serde_json::from_str::<Capabilities>(&json).unwrap(), c);
        assert_eq!(serde_json::to_string(&EventSet::empty()).unwrap(), "[]");
        assert!(serde_json::from_str::<EventSet>(r#"["nap"]"#).is_err());
    }
}
