//! The Container Network Interface as Tessera's plugin speaks it: what a
//! runtime passes (environment variables and a network configuration on
//! standard input) and what the plugin answers (a result or an error on
//! standard output), for spec versions 0.3.0 to 1.1.0.
//!
//! Pure decoding, encoding and decisions in [`config`], [`env`], [`error`],
//! [`result`] and [`version`]; [`plugin`] is the IO shell, the plugin itself,
//! which the `tessera` binary runs when a runtime executes it with
//! `CNI_COMMAND` set, and which talks to the agent through
//! [`tessera_api::AgentClient`]. See
//! <https://github.com/containernetworking/cni/blob/main/SPEC.md>.
#![forbid(unsafe_code)]

pub mod config;
pub mod env;
pub mod error;
pub mod plugin;
pub mod result;
pub mod version;

pub use config::{Attachment, NetConf, PortMapping, RuntimeConfig};
pub use env::{Command, Invocation};
pub use error::{CniError, Code};
pub use result::{attach_result, CniResult, Dns, Interface, IpConfig, Route};
pub use version::Version;

/// Every endpoint the CNI plugin makes is named with this prefix, so that GC
/// touches only attachments made through CNI.
pub const ENDPOINT_PREFIX: &str = "cni-";

/// The endpoint name of a CNI attachment: stable for the same container and
/// interface (a retried ADD finds the same endpoint and address) and at most
/// 128 characters (long container IDs are cut; IDs are unique long before).
pub fn endpoint_name(container_id: &str, ifname: &str) -> String {
    const MAX: usize = 128;
    let room = MAX - ENDPOINT_PREFIX.len() - 1 - ifname.len();
    let id: String = container_id.chars().take(room).collect();
    format!("{ENDPOINT_PREFIX}{id}-{ifname}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoint_names_are_stable_and_bounded() {
        assert_eq!(super::endpoint_name("abc", "eth0"), "cni-abc-eth0");
        let long = "a".repeat(300);
        let name = super::endpoint_name(&long, "eth1");
        assert_eq!(name.len(), 128);
        assert!(name.ends_with("-eth1"));
    }
}
