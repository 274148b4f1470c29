//! The host's own network namespaces, which no endpoint may live in: the
//! agent's (where the bridges and tunnels are) and the machine's init
//! namespace. A path is compared by the namespace it opens (device and
//! inode), so `/proc/2/ns/net` of a kernel thread or a bind mount of the
//! host's namespace under `/run/netns` are seen for what they are.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Why `netns` is one of the host's own namespaces, or `None` when it is
/// not (or cannot be opened: the caller reports a missing namespace).
pub fn is_host_namespace(netns: &Path) -> Option<&'static str> {
    HostNamespaces::read().check(netns).ok().flatten()
}

/// The host's own namespaces, read once to check many paths.
pub struct HostNamespaces {
    agent: Option<(u64, u64)>,
    init: Option<(u64, u64)>,
}

impl HostNamespaces {
    pub fn read() -> Self {
        HostNamespaces { agent: identity(Path::new("/proc/self/ns/net")), init: identity(Path::new("/proc/1/ns/net")) }
    }

    /// Opens `netns` (one `stat`): why it is one of the host's own
    /// namespaces, `None` when it is not, the error when it cannot be
    /// opened.
    pub fn check(&self, netns: &Path) -> std::io::Result<Option<&'static str>> {
        let m = std::fs::metadata(netns)?;
        let target = Some((m.dev(), m.ino()));
        Ok(if self.agent == target {
            Some("is the agent's own network namespace, where the host's bridges and tunnels are")
        } else if self.init == target {
            Some("is the host's init network namespace")
        } else {
            None
        })
    }
}
