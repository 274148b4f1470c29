//! What the files of the Linux data plane share: errno values, netlink
//! errors as [`DataplaneError`]s, a link's index by name (`ip link show
//! NAME`), and the netfilter netlink socket that policy element changes and
//! conntrack zone flushes share.

use std::cell::RefCell;
use std::io;

use futures::TryStreamExt;
use rtnetlink::Handle;
use tessera_model::MacAddr;

use crate::error::DataplaneError;
use crate::nfnetlink::NetfilterSocket;

pub(super) const ENOENT: i32 = 2;
pub(super) const ESRCH: i32 = 3;
pub(super) const ENODEV: i32 = 19;
pub(super) const EEXIST: i32 = 17;
pub(super) const EADDRNOTAVAIL: i32 = 99;

fn nl_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

pub(super) fn kernel_err(op: &'static str, object: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> DataplaneError {
    let object = object.into();
    move |e| DataplaneError::Kernel { op, object, source: nl_io(e) }
}

pub(super) fn errno_err(op: &'static str, object: impl Into<String>, errno: i32) -> DataplaneError {
    DataplaneError::Kernel { op, object: object.into(), source: io::Error::from_raw_os_error(errno) }
}

pub(super) fn mac_of(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

/// The index of the link `name` in the namespace of `handle`; `None` when
/// there is no such link.
pub(super) async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, DataplaneError> {
    let mut stream = handle.link().get().match_name(name.to_string()).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        Err(e) => {
            let e = kernel_err("find link", name)(e);
            if e.errno() == Some(ENODEV) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// The index of the link `name`, which `op` needs: `ENODEV` when there is
/// no such link.
pub(super) async fn need_index(handle: &Handle, op: &'static str, name: &str) -> Result<u32, DataplaneError> {
    link_index(handle, name).await?.ok_or_else(|| errno_err(op, name, ENODEV))
}

/// Why a request on the netfilter socket failed.
pub(super) enum NetfilterFailure<E> {
    /// The socket could not be opened.
    Open(io::Error),
    Request(E),
}

/// The netfilter netlink socket of policy element changes and zone flushes,
/// opened on first use and again after a failure.
#[derive(Default)]
pub(super) struct Netfilter(RefCell<Option<NetfilterSocket>>);

impl Netfilter {
    /// Runs `f` with the netfilter socket, opened if it is not; a failed
    /// request closes it (its answers may still be on their way).
    pub(super) fn with<T, E>(&self, f: impl FnOnce(&mut NetfilterSocket) -> Result<T, E>) -> Result<T, NetfilterFailure<E>> {
        let mut slot = self.0.borrow_mut();
        let socket = match slot.as_mut() {
            Some(s) => s,
            None => slot.insert(NetfilterSocket::open().map_err(NetfilterFailure::Open)?),
        };
        let result = f(socket).map_err(NetfilterFailure::Request);
        if result.is_err() {
            *slot = None;
        }
        result
    }
}
