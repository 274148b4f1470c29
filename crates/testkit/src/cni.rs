//! Running CNI plugins exactly as a runtime does: the environment variables
//! of the spec, the network configuration on standard input, the result or
//! error document read from standard output; and configuration lists run as
//! chains (each plugin's result becomes the next one's `prevResult`; DEL in
//! reverse order).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::Context;
use serde_json::{json, Value};

use crate::Netns;

/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// How a runtime on one host executes plugins.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Directories searched for a plugin named by a configuration's `type`
    /// (`CNI_PATH`), in order.
    pub path: Vec<PathBuf>,
    /// The namespace the runtime (and so the plugin) runs in; the caller's when none.
    pub host: Option<PathBuf>,
}

/// One invocation's outcome: the exit status and the document printed.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub success: bool,
    /// The result or error document; `Null` when the plugin printed nothing.
    pub doc: Value,
    pub stderr: String,
}

impl Outcome {
    /// The CNI error code of a failed invocation.
    pub fn code(&self) -> Option<u64> {
        self.doc["code"].as_u64()
    }

    pub fn msg(&self) -> String {
        format!("{} {}", self.doc["msg"].as_str().unwrap_or_default(), self.doc["details"].as_str().unwrap_or_default())
    }
}

/// The container an invocation is about.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub container_id: &'a str,
    pub netns: Option<&'a str>,
    pub ifname: &'a str,
}

impl Runtime {
    /// A runtime looking in `dirs` (and nowhere else), running plugins in `host`.
    pub fn new(dirs: &[PathBuf], host: Option<&Netns>) -> Runtime {
        Runtime { path: dirs.to_vec(), host: host.map(|n| n.path().to_path_buf()) }
    }

    fn find(&self, plugin: &str) -> anyhow::Result<PathBuf> {
        self.path.iter().map(|d| d.join(plugin)).find(|p| p.is_file()).with_context(|| {
            format!("plugin {plugin} is in none of {:?} (apt-get install containernetworking-plugins)", self.path)
        })
    }

    /// Executes plugin `config.type` with `command` for `target` (none for
    /// VERSION, STATUS and GC) and `config` on standard input.
    pub fn exec(&self, command: &str, target: Option<&Target>, config: &Value) -> anyhow::Result<Outcome> {
        let plugin = config["type"].as_str().context("the configuration has no type")?;
        self.exec_plugin(plugin, command, target, config)
    }

    /// VERSION as libcni asks it: only `{"cniVersion"}` on standard input.
    pub fn version(&self, plugin: &str, cni_version: &str) -> anyhow::Result<Outcome> {
        self.exec_plugin(plugin, "VERSION", None, &json!({ "cniVersion": cni_version }))
    }

    fn exec_plugin(&self, plugin: &str, command: &str, target: Option<&Target>, config: &Value) -> anyhow::Result<Outcome> {
        let bin = self.find(plugin)?;
        let mut cmd = Command::new(&bin);
        let cni_path = self.path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = target {
            cmd.env("CNI_CONTAINERID", t.container_id).env("CNI_IFNAME", t.ifname);
            if let Some(ns) = t.netns {
                cmd.env("CNI_NETNS", ns);
            }
        }
        let mut child = match &self.host {
            Some(ns) => {
                tessera_fabric::spawn_in(&Netns::open(ns.file_name().and_then(|n| n.to_str()).unwrap_or_default())?, cmd)?
            }
            None => cmd.spawn()?,
        };
        child.stdin.take().context("no stdin")?.write_all(config.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let doc = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).with_context(|| format!("{plugin} {command} printed no JSON: {stdout}"))?
        };
        Ok(Outcome { success: out.status.success(), doc, stderr: String::from_utf8_lossy(&out.stderr).into_owned() })
    }

    /// The configuration a runtime gives plugin `i` of `list`: the plugin's
    /// own, plus the list's name and version, the runtime's capability
    /// arguments the plugin declares, and the previous result.
    pub fn plugin_config(list: &Value, i: usize, capability_args: &Value, prev: Option<&Value>) -> Value {
        let mut conf = list["plugins"][i].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        let mut runtime = serde_json::Map::new();
        if let Some(caps) = conf["capabilities"].as_object() {
            for (cap, on) in caps {
                if on.as_bool() == Some(true) {
                    if let Some(v) = capability_args.get(cap) {
                        runtime.insert(cap.clone(), v.clone());
                    }
                }
            }
        }
        if !runtime.is_empty() {
            conf["runtimeConfig"] = Value::Object(runtime);
        }
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    /// ADD through every plugin of `list` in order; returns the final result.
    pub fn add_list(&self, list: &Value, target: &Target, capability_args: &Value) -> anyhow::Result<Value> {
        let mut prev: Option<Value> = None;
        for i in 0..list["plugins"].as_array().map_or(0, Vec::len) {
            let conf = Self::plugin_config(list, i, capability_args, prev.as_ref());
            let out = self.exec("ADD", Some(target), &conf)?;
            anyhow::ensure!(out.success, "{} ADD failed: {} {}", conf["type"], out.doc, out.stderr);
            prev = Some(out.doc);
        }
        prev.context("the list has no plugins")
    }

    /// DEL through every plugin of `list` in reverse order, each given `result` as `prevResult`.
    pub fn del_list(&self, list: &Value, target: &Target, capability_args: &Value, result: Option<&Value>) -> anyhow::Result<()> {
        for i in (0..list["plugins"].as_array().map_or(0, Vec::len)).rev() {
            let conf = Self::plugin_config(list, i, capability_args, result);
            let out = self.exec("DEL", Some(target), &conf)?;
            anyhow::ensure!(out.success, "{} DEL failed: {} {}", conf["type"], out.doc, out.stderr);
        }
        Ok(())
    }
}

/// A single-plugin configuration for Tessera.
pub fn tessera_config(version: &str, network: &str, agent: &std::path::Path) -> Value {
    json!({ "cniVersion": version, "name": network, "type": "tessera", "agent": agent.display().to_string() })
}
