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
    let target = identity(netns)?;
    if identity(Path::new("/proc/self/ns/net")) == Some(target) {
        return Some("is the agent's own network namespace, where the host's bridges and tunnels are");
    }
    if identity(Path::new("/proc/1/ns/net")) == Some(target) {
        return Some("is the host's init network namespace");
    }
    None
}
