//! The local API sockets (the agent's, the Docker plugin's): unix sockets
//! created with mode 0660, owned by root and an optional group, whose
//! connections are accepted only from root, the server's own user, or a
//! member of that group (checked with `SO_PEERCRED`, whatever the file's
//! mode says). Attaching a namespace to a network is root's business.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::net::{UnixListener, UnixStream};

/// A unix socket listener that hands over only connections of allowed peers.
pub struct LocalListener {
    inner: UnixListener,
    group: Option<u32>,
    me: u32,
}

impl LocalListener {
    /// Binds `path` (a stale socket file is replaced), mode 0660, group
    /// `group` when given.
    pub fn bind(path: &Path, group: Option<u32>) -> std::io::Result<LocalListener> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let inner = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid))?;
        }
        Ok(LocalListener { inner, group, me: nix::unistd::geteuid().as_raw() })
    }

    fn allowed(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || uid == self.me || self.group == Some(gid)
    }
}

impl axum::serve::Listener for LocalListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match stream.peer_cred() {
                    Ok(c) if self.allowed(c.uid(), c.gid()) => return (stream, addr),
                    Ok(c) => {
                        tracing::warn!(uid = c.uid(), gid = c.gid(), pid = ?c.pid(), "refused a local API connection: not root, not this user, not the socket's group")
                    }
                    Err(e) => tracing::warn!(error = %e, "refused a local API connection: its credentials cannot be read"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The ID of group `name` (or a number), for `--socket-group`.
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("there is no group {name:?}")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}
