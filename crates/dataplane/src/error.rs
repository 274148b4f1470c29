//! [`DataplaneError`]: why an observation or an action of a data plane
//! failed, with the object it was about and the source.

use std::io;
use std::path::PathBuf;

use crate::desired::DesiredError;

/// Why an observation or an action failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("invalid desired state: {0}")]
    Invalid(#[from] DesiredError),
    /// A netlink request, a `/proc/sys` write or another system call failed.
    #[error("{op} {object}: {source}")]
    Kernel {
        /// The operation, such as `LinkAddBridge` or `observe links`.
        op: &'static str,
        /// The object it was about, such as `tb100`.
        object: String,
        #[source]
        source: io::Error,
    },
    /// `nft` failed, or its output could not be read.
    #[error("nft {op}: {message}")]
    Nft { op: &'static str, message: String },
    /// `conntrack` failed.
    #[error("conntrack -D -w {zone}: {message}")]
    Conntrack { zone: u16, message: String },
    /// A network namespace could not be opened or entered.
    #[error("network namespace {}: {source}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A purge could not take everything away.
    #[error("purge: {0}")]
    Purge(String),
    /// The thread that owns the data plane's sockets has stopped.
    #[error("the data plane worker thread has stopped")]
    WorkerGone,
}

impl DataplaneError {
    /// The OS error number, when the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DataplaneError::Kernel { source, .. } | DataplaneError::Netns { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
