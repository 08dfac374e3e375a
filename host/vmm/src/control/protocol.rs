//! The control protocol: one JSON object per line each way
//! (`docs/control.md`).

use serde::{Deserialize, Serialize};

use crate::config::PolicySpec;
use crate::policies::hotswap::{Change, ChangeReport, Listing};

/// Longest request line accepted, newline included.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A request as it arrives on the wire.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Echoed in the reply, so a client can match them up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    /// `list`, `swap`, `load` or `unload`.
    pub op: String,
    /// The policy to swap or unload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The policy to swap in or load: `PATH[:key=value,...]`, with an
    /// absolute path (the server's working directory is not the client's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Where `snapshot` writes its directory or `dump` its core file: an
    /// absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// An operation on the whole VM (`docs/snapshots.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOp {
    /// Write a snapshot into a new directory.
    Snapshot { dir: std::path::PathBuf },
    /// Take the in-memory baseline a reset returns to.
    Baseline,
    /// Put the VM back to the baseline.
    Reset,
    /// Write guest RAM and the vCPUs' registers as an ELF core file.
    Dump { path: std::path::PathBuf },
}

/// What a request asks for, once checked.
#[derive(Debug)]
pub enum Command {
    List,
    Change(Change),
    Vm(VmOp),
}

/// A reply line.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<serde_json::Value>>,
    /// KVM memslots the VM's RAM is split into by page protections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memslots: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<serde_json::Value>,
    /// What a snapshot, baseline, reset or dump did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

impl Reply {
    pub fn error(id: Option<serde_json::Value>, error: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            id,
            error: Some(error.into()),
            ..Default::default()
        }
    }

    pub fn listing(
        id: Option<serde_json::Value>,
        generation: u64,
        memslots: usize,
        list: &[Listing],
    ) -> Reply {
        Reply {
            ok: true,
            id,
            generation: Some(generation),
            memslots: Some(memslots),
            policies: Some(
                list.iter()
                    .map(|l| serde_json::to_value(l).unwrap_or_default())
                    .collect(),
            ),
            ..Default::default()
        }
    }

    pub fn vm_op(id: Option<serde_json::Value>, report: serde_json::Value) -> Reply {
        Reply {
            ok: true,
            id,
            report: Some(report),
            ..Default::default()
        }
    }

    pub fn changed(id: Option<serde_json::Value>, report: &ChangeReport) -> Reply {
        Reply {
            ok: true,
            id,
            generation: Some(report.generation),
            change: Some(serde_json::to_value(report).unwrap_or_default()),
            ..Default::default()
        }
    }
}

/// Parses one request line (without its newline).
pub fn parse(
    line: &[u8],
) -> Result<(Option<serde_json::Value>, Command), (Option<serde_json::Value>, String)> {
    let req: Request =
        serde_json::from_slice(line).map_err(|e| (None, format!("malformed request: {e}")))?;
    let id = req.id.clone();
    let fail = |msg: String| (id.clone(), msg);
    let need = |field: &Option<String>, what: &str| {
        field
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| fail(format!("`{}` needs a `{what}` field", req.op)))
    };
    let spec = |arg: String| {
        let spec = PolicySpec::parse(&arg).map_err(|e| fail(e.to_string()))?;
        if !spec.path.is_absolute() {
            return Err(fail(format!(
                "policy path {} is relative; send an absolute path",
                spec.path.display()
            )));
        }
        Ok(spec)
    };
    let unexpected = |field: &Option<String>, what: &str| match field {
        Some(_) => Err(fail(format!("`{}` takes no `{what}` field", req.op))),
        None => Ok(()),
    };
    let absolute = |field: &Option<String>| {
        let path = std::path::PathBuf::from(need(field, "path")?);
        if !path.is_absolute() {
            return Err(fail(format!(
                "path {} is relative; send an absolute path",
                path.display()
            )));
        }
        Ok(path)
    };
    if !matches!(req.op.as_str(), "snapshot" | "dump") {
        unexpected(&req.path, "path")?;
    }
    let command = match req.op.as_str() {
        "list" => {
            unexpected(&req.name, "name")?;
            unexpected(&req.policy, "policy")?;
            Command::List
        }
        "snapshot" | "dump" | "baseline" | "reset" => {
            unexpected(&req.name, "name")?;
            unexpected(&req.policy, "policy")?;
            Command::Vm(match req.op.as_str() {
                "snapshot" => VmOp::Snapshot {
                    dir: absolute(&req.path)?,
                },
                "dump" => VmOp::Dump {
                    path: absolute(&req.path)?,
                },
                "baseline" => VmOp::Baseline,
                _ => VmOp::Reset,
            })
        }
        "swap" => Command::Change(Change::Swap {
            name: need(&req.name, "name")?,
            spec: spec(need(&req.policy, "policy")?)?,
        }),
        "load" => {
            unexpected(&req.name, "name")?;
            Command::Change(Change::Load {
                spec: spec(need(&req.policy, "policy")?)?,
            })
        }
        "unload" => {
            unexpected(&req.policy, "policy")?;
            Command::Change(Change::Unload {
                name: need(&req.name, "name")?,
            })
        }
        other => {
            return Err(fail(format!(
            "unknown op `{other}`: use list, swap, load, unload, snapshot, baseline, reset or dump"
        )))
        }
    };
    Ok((id, command))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &str) -> String {
        parse(line.as_bytes()).expect_err("refused").1
    }

    #[test]
    fn requests_parse() {
        let (id, cmd) = parse(br#"{"id":7,"op":"list"}"#).unwrap();
        assert_eq!(id, Some(serde_json::json!(7)));
        assert!(matches!(cmd, Command::List));
        let (_, cmd) =
            parse(br#"{"op":"swap","name":"serial","policy":"/p/s.wasm:port=1,@deadline=5ms"}"#)
                .unwrap();
        let Command::Change(Change::Swap { name, spec }) = cmd else {
            panic!("swap expected")
        };
        assert_eq!(name, "serial");
        assert_eq!(spec.config, vec![("port".into(), "1".into())]);
        assert!(spec.sandbox.deadline_set);
        assert!(matches!(
            parse(br#"{"op":"unload","name":"x"}"#).unwrap().1,
            Command::Change(Change::Unload { .. })
        ));
    }

    #[test]
    fn bad_requests_say_why() {
        assert!(err("not json").starts_with("malformed request: "));
        assert!(err(r#"{"op":"list","extra":1}"#).contains("unknown field `extra`"));
        assert_eq!(
            err(r#"{"op":"reboot"}"#),
            "unknown op `reboot`: use list, swap, load, unload, snapshot, baseline, reset or dump"
        );
        assert_eq!(
            err(r#"{"op":"swap","policy":"/a.wasm"}"#),
            "`swap` needs a `name` field"
        );
        assert_eq!(
            err(r#"{"op":"load","policy":"a.wasm"}"#),
            "policy path a.wasm is relative; send an absolute path"
        );
        assert_eq!(
            err(r#"{"op":"list","name":"x"}"#),
            "`list` takes no `name` field"
        );
        assert!(err(r#"{"op":"load","policy":"/a.wasm:@bogus=1"}"#).contains("bogus"));
    }

    #[test]
    fn vm_ops_parse() {
        let (_, cmd) = parse(br#"{"op":"snapshot","path":"/tmp/s"}"#).unwrap();
        assert!(
            matches!(cmd, Command::Vm(VmOp::Snapshot { dir }) if dir == std::path::Path::new("/tmp/s"))
        );
        assert!(matches!(
            parse(br#"{"op":"reset"}"#).unwrap().1,
            Command::Vm(VmOp::Reset)
        ));
        assert_eq!(err(r#"{"op":"dump"}"#), "`dump` needs a `path` field");
        assert_eq!(
            err(r#"{"op":"dump","path":"core"}"#),
            "path core is relative; send an absolute path"
        );
        assert_eq!(
            err(r#"{"op":"reset","path":"/x"}"#),
            "`reset` takes no `path` field"
        );
    }

    #[test]
    fn replies_round_trip() {
        let r = Reply::error(Some(serde_json::json!("a")), "nope");
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"ok":false,"id":"a","error":"nope"}"#);
        let back: Reply = serde_json::from_str(&line).unwrap();
        assert_eq!(back.error.as_deref(), Some("nope"));
    }
}
