//! What the files of the Linux data plane share: errno values, netlink
//! errors as [`DataplaneError`]s, a link's index by name (`ip link show
//! NAME`, or many names through one socket), and the netfilter netlink
//! socket that policy element changes and conntrack zone flushes share.

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

/// Links' indexes by name through one socket (`SIOCGIFINDEX`): glibc's
/// `if_nametoindex` opens and closes a socket for every name, which costs
/// more than the lookup, and the fast path looks all its ports up every
/// second.
pub(super) struct LinkIndexes(std::os::fd::OwnedFd);

impl LinkIndexes {
    /// Looks up links in the calling thread's network namespace.
    pub(super) fn open() -> io::Result<Self> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        Ok(LinkIndexes(socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?))
    }

    /// The index of link `name`, if there is one.
    #[allow(unsafe_code)]
    pub(super) fn get(&self, name: &str) -> Option<u32> {
        use std::os::fd::AsRawFd;
        if name.len() >= libc::IFNAMSIZ || name.as_bytes().contains(&0) {
            return None;
        }
        // SAFETY: `ifreq` holds only integers, byte arrays and a pointer,
        // for all of which all-zero bytes are a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, b) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *d = *b as libc::c_char;
        }
        // SAFETY: `req` is a valid `ifreq` that lives across the call, its
        // name NUL-terminated (shorter than IFNAMSIZ, the rest zero);
        // SIOCGIFINDEX reads the name and writes only the index, in place.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) };
        // SAFETY: every member of the union is plain integers, valid for
        // any bytes; on success the kernel wrote the index.
        let index = unsafe { req.ifr_ifru.ifru_ifindex };
        (rc == 0).then_some(index).and_then(|i| u32::try_from(i).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::LinkIndexes;

    #[test]
    fn link_indexes_are_those_the_kernel_gives() {
        let links = LinkIndexes::open().unwrap();
        assert_eq!(links.get("lo"), nix::net::if_::if_nametoindex("lo").ok());
        assert_eq!(links.get("no-such-link0"), None);
        assert_eq!(links.get("a-name-longer-than-ifnamsiz"), None);
        assert_eq!(links.get("lo\0x"), None);
    }
}
