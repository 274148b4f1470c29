//! The runtime's environment variables (`CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`), checked per command.

use crate::error::{CniError, Code};

/// What the runtime asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("CNI_COMMAND {other:?} is not a CNI command"),
                    "expected ADD, DEL, CHECK, VERSION, STATUS or GC",
                ))
            }
        })
    }
}

/// One invocation of the plugin as the environment describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// Present for ADD, DEL and CHECK.
    pub container_id: Option<String>,
    /// Present for ADD and CHECK; DEL may come without it (the namespace is gone).
    pub netns: Option<String>,
    /// Present for ADD, DEL and CHECK.
    pub ifname: Option<String>,
    /// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`: where the runtime looks for plugins.
    pub path: Vec<String>,
}

impl Invocation {
    /// Reads the environment through `var` (`std::env::var` in the plugin,
    /// a map in tests) and checks what the command needs.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        let command = Command::parse(&get("CNI_COMMAND").unwrap_or_default())?;
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |k: &str, needed: bool| -> Result<Option<String>, CniError> {
            match get(k) {
                None if needed => Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("{k} is required for {command:?}"),
                    "the runtime must set it",
                )),
                v => Ok(v),
            }
        };
        let container_id = required("CNI_CONTAINERID", needs_container)?;
        if let Some(id) = &container_id {
            check_container_id(id)?;
        }
        let netns = required("CNI_NETNS", matches!(command, Command::Add | Command::Check))?;
        let ifname = required("CNI_IFNAME", needs_container)?;
        if let Some(name) = &ifname {
            check_ifname(name)?;
        }
        let args = match get("CNI_ARGS") {
            Some(a) => parse_args(&a)?,
            None => Vec::new(),
        };
        let path =
            get("CNI_PATH").map(|p| p.split(':').filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default();
        Ok(Invocation { command, container_id, netns, ifname, args, path })
    }
}

/// Container IDs are non-empty and made of letters, digits, `_`, `.` and `-`
/// (spec: "Container ID").
fn check_container_id(id: &str) -> Result<(), CniError> {
    match id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        Some(c) => Err(CniError::new(
            Code::InvalidEnvironment,
            format!("CNI_CONTAINERID contains {c:?}"),
            "use letters, digits, '_', '.' and '-'",
        )),
        None => Ok(()),
    }
}

/// Interface names as Linux takes them: 1 to 15 bytes, not `.` or `..`, no
/// `/`, `:` or white space.
pub fn check_ifname(name: &str) -> Result<(), CniError> {
    let bad = name.len() > 15 || name == "." || name == ".." || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        return Err(CniError::new(
            Code::InvalidEnvironment,
            format!("CNI_IFNAME {name:?} is not a valid interface name"),
            "1 to 15 characters, no '/', ':' or white space",
        ));
    }
    Ok(())
}

fn parse_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CniError::new(Code::InvalidEnvironment, format!("CNI_ARGS element {p:?} is not KEY=VALUE"), ""))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn inv(vars: &[(&str, &str)]) -> Result<Invocation, CniError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Invocation::from_env(|k| m.get(k).cloned())
    }

    #[test]
    fn add_reads_every_variable() {
        let i = inv(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ])
        .unwrap();
        assert_eq!(i.command, Command::Add);
        assert_eq!(i.netns.as_deref(), Some("/run/netns/x"));
        assert_eq!(i.args, vec![("IgnoreUnknown".into(), "1".into()), ("K8S_POD_NAME".into(), "p".into())]);
        assert_eq!(i.path, vec!["/opt/cni/bin", "/usr/lib/cni"]);
    }

    #[test]
    fn add_without_netns_is_error_4_naming_the_variable() {
        let e = inv(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "eth0")]).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_NETNS"), "{e:?}");
    }

    #[test]
    fn del_may_come_without_netns() {
        let i = inv(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "eth0")]).unwrap();
        assert_eq!(i.netns, None);
    }

    #[test]
    fn version_needs_nothing_else() {
        assert_eq!(inv(&[("CNI_COMMAND", "VERSION")]).unwrap().command, Command::Version);
    }

    #[test]
    fn bad_values_are_refused() {
        let base = [("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "eth0")];
        assert_eq!(inv(&[("CNI_COMMAND", "MOVE")]).unwrap_err().code, 4);
        assert_eq!(inv(&[base[0], ("CNI_CONTAINERID", "a/b"), base[2]]).unwrap_err().code, 4);
        assert_eq!(inv(&[base[0], base[1], ("CNI_IFNAME", "a-name-far-too-long")]).unwrap_err().code, 4);
        assert_eq!(inv(&[base[0], base[1], base[2], ("CNI_ARGS", "novalue")]).unwrap_err().code, 4);
    }
}
