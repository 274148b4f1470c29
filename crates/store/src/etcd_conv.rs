//! How Tessera's model maps onto etcd's, in one place: revisions, key
//! ranges, key-values and errors. Every other etcd module converts through
//! these functions, so the mapping is the same in every result, event,
//! key-value and compare.
//!
//! Revisions: etcd's empty store is at revision 1 and Tessera's at 0, and
//! both add one per transaction that changes something, so Tessera's
//! revision is etcd's minus one ([`to_tessera`], [`to_etcd`]). A key's
//! `version` is the same number in both.

use std::time::Duration;

use crate::{KeyValue, StoreError};

/// etcd's revision → Tessera's (`etcd − 1`; etcd's empty store, at 1, is
/// Tessera's 0). Revisions at or below 0 (a missing key's) stay 0.
pub(crate) fn to_tessera(etcd: i64) -> u64 {
    u64::try_from(etcd - 1).unwrap_or(0)
}

/// Tessera's revision → etcd's (`tessera + 1`).
pub(crate) fn to_etcd(tessera: u64) -> i64 {
    i64::try_from(tessera).unwrap_or(i64::MAX - 1) + 1
}

/// The etcd key range `[start, end)` that holds exactly the keys starting
/// with `prefix` (etcd's `WithPrefix`); the empty prefix is every key
/// (`["\0", "\0")` in etcd's convention).
pub(crate) fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let start = prefix.as_bytes().to_vec();
    if start.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = start.clone();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (start, end);
        }
    }
    // Only 0xff bytes: every key from `start` on.
    (start, vec![0])
}

/// An etcd key-value as Tessera's (revisions mapped, the key UTF-8).
pub(crate) fn key_value(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: key(kv)?,
        value: kv.value().to_vec(),
        create_revision: to_tessera(kv.create_revision()),
        mod_revision: to_tessera(kv.mod_revision()),
        version: u64::try_from(kv.version()).unwrap_or(0),
    })
}

/// The key of an etcd key-value, which Tessera keeps as UTF-8.
pub(crate) fn key(kv: &etcd_client::KeyValue) -> Result<String, StoreError> {
    String::from_utf8(kv.key().to_vec()).map_err(|_| StoreError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: "the key is not UTF-8 (not written by Tessera)".into(),
    })
}

/// The revision in an etcd response header, mapped (0 without a header).
pub(crate) fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| to_tessera(h.revision()))
}

/// Maps an etcd client error met while doing `op` to a [`StoreError`]:
/// whatever says the cluster cannot serve now (transport errors, gRPC
/// `Unavailable` such as "no leader" or "request timed out",
/// `DeadlineExceeded`) is [`StoreError::Unavailable`]; the rest is
/// [`StoreError::Backend`].
pub(crate) fn error(op: &'static str, endpoints: &str, err: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    let unavailable =
        |reason: String| StoreError::Unavailable { endpoints: endpoints.to_owned(), reason: format!("{op}: {reason}") };
    match err {
        E::TransportError(e) => unavailable(format!("cannot reach etcd: {e}")),
        E::IoError(e) => unavailable(format!("cannot reach etcd: {e}")),
        E::GRpcStatus(status) if is_unavailability(&status) => unavailable(status.message().to_owned()),
        other => StoreError::backend(op, other),
    }
}

fn is_unavailability(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        // A connection dropped mid-request (a member killed) surfaces as
        // Unknown or Cancelled with a transport message.
        Code::Unknown | Code::Cancelled => {
            let m = status.message().to_ascii_lowercase();
            m.contains("transport") || m.contains("connection") || m.contains("broken pipe") || m.contains("h2 protocol")
        }
        _ => false,
    }
}

/// The error for a call that got no answer within `timeout`.
pub(crate) fn timed_out(op: &'static str, endpoints: &str, timeout: Duration) -> StoreError {
    StoreError::Unavailable {
        endpoints: endpoints.to_owned(),
        reason: format!("{op}: no answer from etcd within {} ms (no quorum, or every endpoint down)", timeout.as_millis()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_map_by_one_and_missing_keys_stay_at_zero() {
        assert_eq!(to_tessera(1), 0);
        assert_eq!(to_tessera(8), 7);
        assert_eq!(to_tessera(0), 0);
        assert_eq!(to_etcd(7), 8);
    }

    #[test]
    fn a_prefix_range_ends_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_range("a/"), (b"a/".to_vec(), b"a0".to_vec()));
        assert_eq!(prefix_range(""), (vec![0], vec![0]));
        assert_eq!(prefix_range("\u{7f}"), (vec![0x7f], vec![0x80]));
    }
}
