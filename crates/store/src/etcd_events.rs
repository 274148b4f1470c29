//! The event side of the etcd backend: reading the log
//! ([`read_events`], for [`Store::events_since`](crate::Store::events_since)),
//! following the latest revision ([`follow`], for
//! [`Store::subscribe`](crate::Store::subscribe)), and the accounting that
//! keeps at most `retain_events` events ([`RetainedLog`]).
//!
//! etcd keeps its history until it is compacted, and a watch from a
//! revision replays it. A read of the log watches *every* key and keeps
//! those under the prefix: every revision has at least one event, so
//! seeing the head revision (read just before) proves the read complete,
//! without waiting for events that may never come.
//!
//! Compaction: etcd's compaction at its revision `R` discards the events
//! before `R` *and* the deletions at `R`, and still lets a watch start at
//! `R`. So Tessera's compaction point `c` is etcd's compaction at
//! `to_etcd(c)` (its events are discarded anyway), and a read of the
//! events after `after` watches from `to_etcd(after)`, one revision early,
//! dropping that revision's events: etcd refuses exactly when `after < c`,
//! which is [`StoreError::Compacted`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{EventType, WatchClient, WatchOptions};

use crate::etcd_conv::{self, key_value, prefix_range, to_etcd, to_tessera};
use crate::etcd_recent::{Recent, RecentEvents};
use crate::store::Page;
use crate::{Event, StoreError};

/// How a read of the log talks to etcd.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) watch: WatchClient,
    pub(crate) endpoints: Arc<str>,
    pub(crate) timeout: Duration,
}

impl Link {
    fn error(&self, op: &'static str, err: etcd_client::Error) -> StoreError {
        etcd_conv::error(op, &self.endpoints, err)
    }

    fn timed_out(&self, op: &'static str) -> StoreError {
        etcd_conv::timed_out(op, &self.endpoints, self.timeout)
    }
}

/// The events after Tessera revision `after` under `prefix`, up to the head
/// revision `head` (Tessera's, read by the caller just before), a page of
/// `limit` (see [`Store::events_since`](crate::Store::events_since)).
pub(crate) async fn read_events(
    link: &Link,
    prefix: &str,
    after: u64,
    head: u64,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let mut page = Page::new(limit);
    if after >= head {
        return Ok(page.events);
    }
    let (start, end) = prefix_range("");
    // From `after` itself, so that etcd refuses when `after` is compacted.
    let options = WatchOptions::new().with_range(end).with_start_revision(to_etcd(after));
    let mut watch = link.watch.clone();
    let mut stream = match tokio::time::timeout(link.timeout, watch.watch(start, Some(options))).await {
        Err(_) => return Err(link.timed_out("watch the event log")),
        Ok(Err(e)) => return Err(link.error("watch the event log", e)),
        Ok(Ok(stream)) => stream,
    };
    'read: loop {
        let response = match tokio::time::timeout(link.timeout, stream.message()).await {
            Err(_) => return Err(link.timed_out("read the event log")),
            Ok(Err(e)) => return Err(link.error("read the event log", e)),
            Ok(Ok(None)) => {
                return Err(StoreError::backend("read the event log", "etcd ended the watch before the head revision"))
            }
            Ok(Ok(Some(response))) => response,
        };
        if response.compact_revision() > 0 {
            return Err(compacted(after, response.compact_revision()));
        }
        if response.canceled() {
            let reason = response.cancel_reason().to_owned();
            return Err(StoreError::backend("read the event log", format!("etcd cancelled the watch: {reason}")));
        }
        let mut seen = 0;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = to_tessera(kv.mod_revision());
            seen = seen.max(revision);
            if revision > head {
                break 'read;
            }
            if revision <= after || !kv.key().starts_with(prefix.as_bytes()) {
                continue;
            }
            if !page.takes(revision) {
                break 'read;
            }
            page.events.push(tessera_event(event.event_type(), kv, etcd_conv::key(kv)?, revision)?);
        }
        if seen >= head {
            break;
        }
    }
    // Dropping the stream closes it; etcd cancels the watcher.
    Ok(page.events)
}

/// An etcd event of `kv` (whose key is `key`) at Tessera revision
/// `revision` as Tessera's.
fn tessera_event(kind: EventType, kv: &etcd_client::KeyValue, key: String, revision: u64) -> Result<Event, StoreError> {
    Ok(match kind {
        EventType::Put => Event::put(key_value(kv)?),
        EventType::Delete => Event::delete(key, revision),
    })
}

/// [`StoreError::Compacted`] for a watch from `after` that etcd refused:
/// etcd was compacted at its revision `compact_revision`, Tessera's
/// compaction point `to_tessera(compact_revision)` (see the module docs).
pub(crate) fn compacted(after: u64, compact_revision: i64) -> StoreError {
    StoreError::Compacted { requested: after, compacted: to_tessera(compact_revision) }
}

/// The events each retained revision holds, as far as this process has
/// seen them (its own writes and those [`follow`] reports), to keep at most
/// `retain` events in etcd's history.
///
/// Revisions from before the store was opened are not counted: they go at
/// the first compaction.
#[derive(Debug, Default)]
pub(crate) struct RetainedLog {
    counts: BTreeMap<u64, u64>,
    total: u64,
    /// Revisions up to this one are not counted (before the store was
    /// opened, or discarded).
    floor: u64,
}

impl RetainedLog {
    /// A log that counts the revisions after `head`.
    pub(crate) fn after(head: u64) -> Self {
        RetainedLog { counts: BTreeMap::new(), total: 0, floor: head }
    }

    /// Records that `revision` made `events` events (again is a no-op).
    pub(crate) fn record(&mut self, revision: u64, events: u64) {
        if revision <= self.floor || events == 0 {
            return;
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = self.counts.entry(revision) {
            slot.insert(events);
            self.total += events;
        }
    }

    /// The new compaction point (Tessera's newest revision to discard) when
    /// more than `retain + slack` events are retained, after which `retain`
    /// or fewer remain; `None` if nothing is to be discarded.
    pub(crate) fn compaction(&mut self, retain: u64, slack: u64) -> Option<u64> {
        if self.total <= retain.saturating_add(slack) {
            return None;
        }
        let mut point = None;
        while self.total > retain {
            let Some((revision, events)) = self.counts.pop_first() else { break };
            self.total -= events;
            point = Some(revision);
        }
        if let Some(point) = point {
            self.floor = self.floor.max(point);
        }
        point
    }
}

/// How long a read of the recent events waits for the watch to deliver the
/// revisions this process knows of, before it reads etcd instead.
const RECENT_WAIT: Duration = Duration::from_secs(1);

/// What [`follow`] updates.
pub(crate) struct Followed {
    pub(crate) revisions: tokio::sync::watch::Sender<u64>,
    pub(crate) log: Arc<Mutex<RetainedLog>>,
    /// The events the watch delivered, and the revision up to which it
    /// delivered all of them.
    pub(crate) recent: Mutex<RecentEvents>,
    pub(crate) recent_head: tokio::sync::watch::Sender<u64>,
}

impl Followed {
    /// What [`follow`] updates, for a store whose revision is `head`.
    pub(crate) fn new(head: u64) -> Self {
        Followed {
            revisions: tokio::sync::watch::channel(head).0,
            log: Arc::new(Mutex::new(RetainedLog::after(head))),
            recent: Mutex::new(RecentEvents::after(head)),
            recent_head: tokio::sync::watch::channel(head).0,
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEvents> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The events after `after` under `prefix` from those the watch
    /// delivered, once it delivered every revision this process knows of
    /// (its own writes included); `None` when the ring does not reach back
    /// to `after` or the watch is late: the caller reads etcd.
    pub(crate) async fn recent_since(&self, prefix: &str, after: u64, limit: usize) -> Option<Vec<Event>> {
        let known = *self.revisions.borrow();
        if after >= known && after >= self.recent().head() {
            return Some(Vec::new());
        }
        let mut delivered = self.recent_head.subscribe();
        if !matches!(tokio::time::timeout(RECENT_WAIT, delivered.wait_for(|head| *head >= known)).await, Ok(Ok(_))) {
            return None;
        }
        match self.recent().since(prefix, after, limit) {
            Recent::Page(events) => Some(events),
            Recent::Before => None,
        }
    }

    /// Forgets the recent events up to the compaction point `point`.
    pub(crate) fn compacted(&self, point: u64) {
        self.recent().forget_through(point);
    }

    /// Records what one response of the watch delivered.
    fn delivered(&self, events: Vec<Event>, newest: u64) {
        let head = {
            let mut recent = self.recent();
            recent.push(events, newest);
            recent.head()
        };
        self.publish_recent_head(head);
    }

    fn publish_recent_head(&self, head: u64) {
        self.recent_head.send_if_modified(|h| std::mem::replace(h, head) != head);
    }

    /// Starts the recent events again after `head` (the watch jumped over
    /// a compacted part of the log).
    fn restarted(&self, head: u64) {
        self.recent().restart(head);
        self.publish_recent_head(head);
    }

    /// Publishes `revision` as the latest if it is newer than the last one.
    pub(crate) fn advance(&self, revision: u64) {
        self.revisions.send_if_modified(|latest| {
            let newer = revision > *latest;
            if newer {
                *latest = revision;
            }
            newer
        });
    }
}

/// Follows every change of the store from Tessera revision `from` on with
/// one etcd watch, publishing the latest revision and counting each
/// revision's events. Runs until aborted; a broken watch is opened again
/// (after a pause) from the last revision seen, or from the head if that
/// one was compacted meanwhile.
///
/// The watch itself is not bounded by the call timeout (it lasts); HTTP/2
/// keep-alive pings find a dead connection. A failure is logged once until
/// the watch works again.
pub(crate) async fn follow(link: Link, mut kv: etcd_client::KvClient, followed: Arc<Followed>, from: u64) {
    let mut last = from;
    let mut failing = false;
    loop {
        let seen = last;
        let result = follow_once(&link, &followed, &mut last).await;
        if failing && last > seen {
            tracing::info!(revision = last, "the etcd watch that follows the store's revision works again");
            failing = false;
        }
        if let Err(e) = result {
            if !failing {
                tracing::warn!(error = %e, revision = last, "the etcd watch that follows the store's revision broke; opening it again");
                failing = true;
            } else {
                tracing::debug!(error = %e, revision = last, "the etcd watch that follows the store's revision is still broken");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if e.is_compacted() {
                if let Ok(Ok(head)) =
                    tokio::time::timeout(link.timeout, kv.get(vec![0], Some(etcd_client::GetOptions::new().with_count_only())))
                        .await
                {
                    last = etcd_conv::header_revision(head.header());
                    followed.restarted(last);
                    followed.advance(last);
                }
            }
        }
    }
}

async fn follow_once(link: &Link, followed: &Followed, last: &mut u64) -> Result<(), StoreError> {
    let (start, end) = prefix_range("");
    let options = WatchOptions::new().with_range(end).with_start_revision(to_etcd(*last + 1)).with_progress_notify();
    let mut watch = link.watch.clone();
    let mut stream = match tokio::time::timeout(link.timeout, watch.watch(start, Some(options))).await {
        Err(_) => return Err(link.timed_out("watch the store")),
        Ok(Err(e)) => return Err(link.error("watch the store", e)),
        Ok(Ok(stream)) => stream,
    };
    loop {
        let response = match stream.message().await {
            Err(e) => return Err(link.error("follow the store", e)),
            Ok(None) => return Err(StoreError::backend("follow the store", "etcd ended the watch")),
            Ok(Some(response)) => response,
        };
        if response.compact_revision() > 0 {
            return Err(compacted(*last, response.compact_revision()));
        }
        if response.canceled() {
            return Err(StoreError::backend("follow the store", response.cancel_reason().to_owned()));
        }
        let mut per_revision: BTreeMap<u64, u64> = BTreeMap::new();
        let mut events = Vec::with_capacity(response.events().len());
        for event in response.events() {
            if let Some(kv) = event.kv() {
                let revision = to_tessera(kv.mod_revision());
                *per_revision.entry(revision).or_default() += 1;
                // A key that is not UTF-8 is not Tessera's (the cluster may
                // be shared): counted for retention, not kept.
                let Ok(key) = etcd_conv::key(kv) else { continue };
                events.push(tessera_event(event.event_type(), kv, key, revision)?);
            }
        }
        if let Some((&newest, _)) = per_revision.last_key_value() {
            {
                let mut log = followed.log.lock().unwrap_or_else(|p| p.into_inner());
                for (&revision, &events) in &per_revision {
                    log.record(revision, events);
                }
            }
            *last = newest;
            followed.delivered(events, newest);
            followed.advance(newest);
        }
    }
}
