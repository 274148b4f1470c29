//! The recent events the etcd backend's watch delivered, kept in memory so
//! that [`Store::events_since`](crate::Store::events_since) answers a reader
//! that follows the log (the controller's watch hub, a watcher catching up)
//! without a call to etcd: the follower already received every event, and
//! reading them again from etcd would cost the cluster a quorum read and a
//! watch per wake-up.
//!
//! The ring holds every event with a revision in `(from, head]`, whole
//! revisions, bounded in events and bytes; older events, and those
//! discarded by a compaction of this process, are read from etcd as
//! before.

use std::collections::VecDeque;

use crate::store::Page;
use crate::Event;

/// The ring keeps at most this many events...
const RECENT_EVENTS: usize = 65_536;
/// ...and at most this many bytes of keys and values.
const RECENT_BYTES: usize = 64 << 20;

/// Every event with a revision in `(from, head]`, in revision order (`from`
/// may pass `head` after a compaction the follower has not caught up with:
/// the events up to `from` are then not kept).
#[derive(Debug)]
pub(crate) struct RecentEvents {
    from: u64,
    head: u64,
    events: VecDeque<Event>,
    bytes: usize,
}

/// What the ring says of a read after a revision.
#[derive(Debug, PartialEq)]
pub(crate) enum Recent {
    /// The page of events after the revision, up to the ring's head.
    Page(Vec<Event>),
    /// The ring does not reach back that far: read etcd.
    Before,
}

impl RecentEvents {
    /// An empty ring that starts after revision `head`.
    pub(crate) fn after(head: u64) -> Self {
        RecentEvents { from: head, head, events: VecDeque::new(), bytes: 0 }
    }

    /// The revision up to which the ring holds every event.
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Appends the events of whole revisions after the head (older ones,
    /// delivered again after a reconnection, are skipped), and moves the
    /// head to `newest`.
    pub(crate) fn push(&mut self, events: impl IntoIterator<Item = Event>, newest: u64) {
        for event in events {
            if event.revision <= self.head.max(self.from) {
                continue;
            }
            self.bytes += size(&event);
            self.events.push_back(event);
        }
        self.head = self.head.max(newest);
        while self.events.len() > RECENT_EVENTS || self.bytes > RECENT_BYTES {
            let Some(oldest) = self.events.front().map(|e| e.revision) else { break };
            self.forget_through(oldest);
        }
    }

    /// Starts again after `head`, forgetting everything (the follower
    /// jumped over a compacted part of the log).
    pub(crate) fn restart(&mut self, head: u64) {
        *self = RecentEvents::after(head);
    }

    /// Forgets the events up to `revision` (compacted: a read from before
    /// it must go to etcd, which says so).
    pub(crate) fn forget_through(&mut self, revision: u64) {
        while self.events.front().is_some_and(|e| e.revision <= revision) {
            if let Some(e) = self.events.pop_front() {
                self.bytes -= size(&e);
            }
        }
        self.from = self.from.max(revision);
    }

    /// The page of events after `after` under `prefix` (see
    /// [`Store::events_since`](crate::Store::events_since)), if the ring
    /// reaches back to `after`.
    pub(crate) fn since(&self, prefix: &str, after: u64, limit: usize) -> Recent {
        if after < self.from {
            return Recent::Before;
        }
        let mut page = Page::new(limit);
        let start = self.events.partition_point(|e| e.revision <= after);
        for event in self.events.range(start..) {
            if !event.kv.key.starts_with(prefix) {
                continue;
            }
            if !page.takes(event.revision) {
                break;
            }
            page.events.push(event.clone());
        }
        Recent::Page(page.events)
    }
}

fn size(event: &Event) -> usize {
    event.kv.key.len() + event.kv.value.len() + 64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyValue;

    fn put(key: &str, revision: u64) -> Event {
        Event::put(KeyValue {
            key: key.into(),
            value: b"v".to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
        })
    }

    fn revisions(r: Recent) -> Vec<(String, u64)> {
        match r {
            Recent::Page(events) => events.into_iter().map(|e| (e.kv.key, e.revision)).collect(),
            Recent::Before => panic!("the ring should answer"),
        }
    }

    #[test]
    fn answers_after_its_start_by_prefix_and_page_and_sends_older_reads_to_etcd() {
        let mut ring = RecentEvents::after(10);
        ring.push([put("/a/1", 11), put("/b/1", 11), put("/a/2", 12)], 12);
        ring.push([put("/a/3", 14)], 14);
        assert_eq!(ring.head(), 14);
        assert_eq!(ring.since("", 9, usize::MAX), Recent::Before);
        assert_eq!(revisions(ring.since("/a/", 10, usize::MAX)), [("/a/1".into(), 11), ("/a/2".into(), 12), ("/a/3".into(), 14)]);
        // A page ends after the revision that reached the limit.
        assert_eq!(revisions(ring.since("", 10, 1)), [("/a/1".into(), 11), ("/b/1".into(), 11)]);
        assert_eq!(revisions(ring.since("", 12, usize::MAX)), [("/a/3".into(), 14)]);
        assert!(revisions(ring.since("", 14, usize::MAX)).is_empty());
    }

    #[test]
    fn events_delivered_again_are_kept_once_and_a_compaction_sends_reads_before_it_to_etcd() {
        let mut ring = RecentEvents::after(0);
        ring.push([put("/a", 1), put("/b", 2)], 2);
        ring.push([put("/b", 2), put("/c", 3)], 3);
        assert_eq!(revisions(ring.since("", 0, usize::MAX)).len(), 3);
        ring.forget_through(2);
        assert_eq!(ring.since("", 1, usize::MAX), Recent::Before);
        assert_eq!(revisions(ring.since("", 2, usize::MAX)), [("/c".into(), 3)]);
        ring.restart(40);
        assert_eq!(ring.since("", 3, usize::MAX), Recent::Before);
        assert_eq!(ring.head(), 40);
    }

    #[test]
    fn the_ring_forgets_whole_revisions_beyond_its_bound() {
        let mut ring = RecentEvents::after(0);
        for r in 1..=(RECENT_EVENTS as u64 / 2 + 1) {
            ring.push([put("/x", r), put("/y", r)], r);
        }
        assert!(ring.events.len() <= RECENT_EVENTS);
        assert_eq!(ring.since("", 0, usize::MAX), Recent::Before);
        assert_eq!(ring.since("", 1, 1), Recent::Page(vec![put("/x", 2), put("/y", 2)]));
    }
}
