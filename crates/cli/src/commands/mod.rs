//! The subcommands. Each turns arguments into API calls and prints a table or JSON.

pub mod agent;
pub mod cni;
pub mod config;
pub mod controller;
pub mod controller_status;
pub mod demo;
pub mod docker_plugin;
pub mod docs;
pub mod doctor;
pub mod endpoint;
pub mod floating_ip;
pub mod flow;
pub mod host;
pub mod network;
pub mod pki;
pub mod policy;
pub mod project;
pub mod purge;
pub mod service;
pub mod store;
pub mod token;
pub mod topology;

use serde::Serialize;

use tessera_api::ControllerClient;

pub struct Ctx {
    pub client: ControllerClient,
    pub json: bool,
}

impl Ctx {
    /// Prints `value` as pretty JSON when `--json` is set, else `human()`.
    pub fn print<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            print!("{}", human());
        }
        Ok(())
    }
}

pub fn join<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }
}
