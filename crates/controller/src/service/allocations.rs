//! What this controller knows of the addresses allocated in each subnet,
//! kept up to date from the store's log: a pick reads the events since it
//! last looked (a few, from memory on etcd) instead of every allocation of
//! the subnet. The transaction that takes an address requires it to be
//! free, so a view that missed a change only makes a create pick again.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use tessera_store::{Event, EventKind, Store, StoreError};

/// At most this many subnets are known; past it, all are forgotten.
const KNOWN_SUBNETS: usize = 1024;
/// A view further behind than this many events is read again whole.
const CATCH_UP_EVENTS: usize = 4096;

/// A subnet's allocated addresses as of `revision`.
struct Known {
    revision: u64,
    taken: BTreeSet<IpAddr>,
}

/// Per allocation prefix (one subnet of one network), what is known.
#[derive(Default)]
pub(super) struct KnownAllocations(Mutex<HashMap<String, Known>>);

impl KnownAllocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The addresses allocated under `prefix`, as of a revision at least as
    /// recent as the last this process committed or saw committed.
    pub(super) async fn taken(&self, store: &dyn Store, prefix: &str) -> Result<BTreeSet<IpAddr>, StoreError> {
        let cursor = self.lock().get(prefix).map(|k| k.revision);
        if let Some(after) = cursor {
            // Every event up to `now` is in what `events_since` reads next.
            let now = *store.subscribe().borrow();
            match store.events_since(prefix, after, CATCH_UP_EVENTS).await {
                Ok(events) if events.len() < CATCH_UP_EVENTS => {
                    let mut known = self.lock();
                    if let Some(k) = known.get_mut(prefix).filter(|k| k.revision == after) {
                        apply(k, prefix, &events, now);
                        return Ok(k.taken.clone());
                    }
                    // Another pick moved the view on meanwhile: it is newer.
                    if let Some(k) = known.get(prefix).filter(|k| k.revision > after) {
                        return Ok(k.taken.clone());
                    }
                }
                Ok(_) | Err(StoreError::Compacted { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let read = store.range_keys_relaxed(prefix).await?;
        let taken: BTreeSet<IpAddr> =
            read.kvs.iter().filter_map(|kv| tessera_ipam::parse_sort_key(&kv.key[prefix.len()..])).collect();
        let mut known = self.lock();
        if known.len() >= KNOWN_SUBNETS {
            known.clear();
        }
        known.insert(prefix.to_owned(), Known { revision: read.revision, taken: taken.clone() });
        Ok(taken)
    }
}

/// Moves `known` to the revision after `events` (read at `now` or later).
fn apply(known: &mut Known, prefix: &str, events: &[Event], now: u64) {
    for e in events {
        let Some(addr) = e.kv.key.get(prefix.len()..).and_then(tessera_ipam::parse_sort_key) else { continue };
        match e.kind {
            EventKind::Put => known.taken.insert(addr),
            EventKind::Delete => known.taken.remove(&addr),
        };
    }
    let last = events.last().map_or(0, |e| e.revision);
    known.revision = known.revision.max(now).max(last);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tessera_store::{MemStore, Op, Txn};

    const PREFIX: &str = "/a/n/0/";

    async fn put(store: &MemStore, addr: &str) {
        let a: IpAddr = addr.parse().unwrap();
        let key = format!("{PREFIX}{}", tessera_ipam::sort_key(a));
        store.txn(Txn::default().then(Op::put(key, b"x".to_vec()))).await.unwrap();
    }

    async fn delete(store: &MemStore, addr: &str) {
        let a: IpAddr = addr.parse().unwrap();
        store.txn(Txn::default().then(Op::delete(format!("{PREFIX}{}", tessera_ipam::sort_key(a))))).await.unwrap();
    }

    fn addrs(set: &BTreeSet<IpAddr>) -> Vec<String> {
        set.iter().map(|a| a.to_string()).collect()
    }

    #[tokio::test]
    async fn the_view_follows_allocations_and_releases_made_after_it_was_read() {
        let store = Arc::new(MemStore::new());
        let known = KnownAllocations::default();
        put(&store, "10.0.0.2").await;
        assert_eq!(addrs(&known.taken(store.as_ref(), PREFIX).await.unwrap()), ["10.0.0.2"]);
        put(&store, "10.0.0.3").await;
        delete(&store, "10.0.0.2").await;
        store.txn(Txn::default().then(Op::put("/other", b"x".to_vec()))).await.unwrap();
        assert_eq!(addrs(&known.taken(store.as_ref(), PREFIX).await.unwrap()), ["10.0.0.3"]);
        assert_eq!(known.lock()[PREFIX].revision, 4, "the view stands at the latest revision, past others' changes");
    }
}
