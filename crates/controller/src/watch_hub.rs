//! The watch hub: one reader of the store's log per controller. Each event
//! of a mirrored object is translated and encoded once, as the NDJSON line
//! every watcher sends, and kept in a ring of recent lines that all
//! watchers share (a watcher holds only its position in it). A watcher
//! behind the ring reads the store itself until it reaches the ring; one
//! behind the store's log gets the `compacted` error and takes a snapshot.
//!
//! Snapshots are shared the same way: one encoded snapshot per revision,
//! made once however many hosts ask for it at that revision.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::body::Bytes;
use futures::Stream;
use tessera_model::watch::WatchEvent;
use tessera_store::{Event, Store, StoreError};

use crate::error::Result;
use crate::keys;
use crate::watch::{encode, is_error, line_of, snapshot, Audience, Scope};

/// The ring keeps at most this many lines...
const RING_LINES: usize = 50_000;
/// ...and at most this many bytes of them.
const RING_BYTES: usize = 64 << 20;
/// Events the hub reads from the store at a time.
const HUB_PAGE: usize = 1024;
/// Events a watcher behind the ring reads from the store at a time.
const CATCH_UP_PAGE: usize = 64;
/// Lines a watcher sends in one piece of its stream.
const SEND_LINES: usize = 256;
/// Lines a scoped watcher looks at in the ring at a time (the ring's lock
/// is held meanwhile).
const SCAN_LINES: usize = 4096;
/// The size of a snapshot's pieces as sent.
const SNAPSHOT_PIECE: usize = 64 << 10;
/// How long the hub waits before reading the store again after a failure.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The encoded recent events, in revision order.
struct Ring {
    /// Every mirrored event with a revision in `(from, cursor]` is in
    /// `lines`; events at or before `from` must be read from the store.
    from: u64,
    cursor: u64,
    lines: VecDeque<(u64, Bytes, Audience)>,
    bytes: usize,
}

impl Ring {
    fn push(&mut self, revision: u64, line: Bytes, audience: Audience) {
        self.bytes += line.len();
        self.lines.push_back((revision, line, audience));
        while self.lines.len() > RING_LINES || self.bytes > RING_BYTES {
            // Whole revisions leave the ring: `from` says what it still holds.
            let Some(&(oldest, _, _)) = self.lines.front() else { break };
            while self.lines.front().is_some_and(|(r, _, _)| *r == oldest) {
                if let Some((_, l, _)) = self.lines.pop_front() {
                    self.bytes -= l.len();
                }
            }
            self.from = oldest;
        }
    }

    /// The lines after `after` that `scope` admits (at most [`SEND_LINES`],
    /// whole revisions, looking at no more than [`SCAN_LINES`]), and the
    /// revision the watcher stands at once it sent them.
    fn after(&self, after: u64, scope: &Scope) -> (Vec<Bytes>, u64) {
        let start = self.lines.partition_point(|(r, _, _)| *r <= after);
        let mut out = Vec::new();
        let mut last = after;
        for (scanned, (r, l, audience)) in self.lines.range(start..).enumerate() {
            if (out.len() >= SEND_LINES || scanned >= SCAN_LINES) && *r != last {
                return (out, last);
            }
            if scope.admits(audience) {
                out.push(l.clone());
            }
            last = *r;
        }
        (out, self.cursor.max(after))
    }
}

/// See the module docs.
pub struct WatchHub {
    store: Arc<dyn Store>,
    ring: Mutex<Ring>,
    /// The ring's cursor, to wake watchers.
    cursor: tokio::sync::watch::Sender<u64>,
    started: std::sync::Once,
    /// The snapshot of the latest revision asked for, and its encoding
    /// (made when first asked for whole).
    snapshot: tokio::sync::Mutex<Option<SharedSnapshot>>,
    /// The network and host of every endpoint the reader knows, for the
    /// audience of a deleted endpoint's line.
    endpoints: Mutex<HashMap<uuid::Uuid, (uuid::Uuid, Arc<str>)>>,
    /// The open watches, for `GET /v1/controller/status`.
    watchers: Mutex<Watchers>,
}

#[derive(Default)]
struct Watchers {
    next: u64,
    open: std::collections::HashMap<u64, Watching>,
}

/// One revision's snapshot, decoded, and encoded whole once asked for.
struct SharedSnapshot {
    revision: u64,
    snapshot: Arc<tessera_model::watch::Snapshot>,
    whole: Option<Arc<Vec<Bytes>>>,
}

/// Who watches, since when, and where their stream stands.
struct Watching {
    who: String,
    networks: Option<usize>,
    since_ms: u64,
    at: Arc<std::sync::atomic::AtomicU64>,
}

/// One open watch, as `GET /v1/controller/status` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct WatcherStatus {
    /// The caller (a host, an administrator, a token's project).
    pub who: String,
    /// The revision up to which its stream has been sent.
    pub revision: u64,
    /// How many revisions it is behind the newest this controller read.
    pub lag: u64,
    /// When it started watching (ms since the Unix epoch).
    pub since_ms: u64,
    /// How many networks' endpoints it receives (besides its own host's);
    /// absent: every network's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networks: Option<usize>,
}

/// Removes a watch from the registry when its stream ends.
struct Registered {
    hub: Weak<WatchHub>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.watchers.lock().unwrap_or_else(|p| p.into_inner()).open.remove(&self.id);
        }
    }
}

impl WatchHub {
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        let ring = Ring { from: u64::MAX, cursor: 0, lines: VecDeque::new(), bytes: 0 };
        Arc::new(WatchHub {
            store,
            ring: Mutex::new(ring),
            cursor: tokio::sync::watch::Sender::new(0),
            started: std::sync::Once::new(),
            snapshot: Default::default(),
            endpoints: Default::default(),
            watchers: Default::default(),
        })
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the hub's reader on first use (it stops when the hub is dropped).
    fn start(self: &Arc<Self>) {
        self.started.call_once(|| {
            tokio::spawn(read_log(Arc::downgrade(self), self.store.clone()));
        });
    }

    /// Lines in the ring and its bytes (for `/metrics`).
    pub fn held(&self) -> (usize, usize) {
        let r = self.ring();
        (r.lines.len(), r.bytes)
    }

    /// The open watches, the furthest behind first.
    pub fn watchers(&self) -> Vec<WatcherStatus> {
        let cursor = self.ring().cursor;
        let w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<WatcherStatus> = w
            .open
            .values()
            .map(|x| {
                let revision = x.at.load(std::sync::atomic::Ordering::Relaxed);
                WatcherStatus {
                    who: x.who.clone(),
                    revision,
                    lag: cursor.saturating_sub(revision),
                    since_ms: x.since_ms,
                    networks: x.networks,
                }
            })
            .collect();
        out.sort_by(|a, b| b.lag.cmp(&a.lag).then_with(|| a.who.cmp(&b.who)));
        out
    }

    /// The revision the hub has read the store's log up to.
    pub fn cursor(&self) -> u64 {
        self.ring().cursor
    }

    fn register(self: &Arc<Self>, who: String, scope: &Scope, after: u64) -> (Registered, Arc<std::sync::atomic::AtomicU64>) {
        let at = Arc::new(std::sync::atomic::AtomicU64::new(after));
        let since_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        let id = w.next;
        w.next += 1;
        w.open.insert(id, Watching { who, networks: scope.networks(), since_ms, at: at.clone() });
        (Registered { hub: Arc::downgrade(self), id }, at)
    }

    /// The snapshot's JSON in pieces, made once per revision.
    pub async fn snapshot_pieces(&self) -> Result<Arc<Vec<Bytes>>> {
        let mut cached = self.snapshot.lock().await;
        let shared = self.current_snapshot(&mut cached).await?;
        if let Some(whole) = &shared.whole {
            return Ok(whole.clone());
        }
        let pieces: Arc<Vec<Bytes>> = Arc::new(shared.snapshot.clone().json_pieces(SNAPSHOT_PIECE).map(Bytes::from).collect());
        shared.whole = Some(pieces.clone());
        Ok(pieces)
    }

    /// The snapshot's JSON with only the endpoints `scope` keeps, in pieces
    /// made as they are sent; the snapshot itself is read once per revision
    /// however many hosts ask for it.
    pub async fn scoped_snapshot(&self, scope: Scope) -> Result<impl Iterator<Item = Bytes> + Send + 'static> {
        let mut cached = self.snapshot.lock().await;
        let snap = self.current_snapshot(&mut cached).await?.snapshot.clone();
        drop(cached);
        Ok(snap.json_pieces_where(SNAPSHOT_PIECE, move |e| scope.keeps(e.network, &e.host)).map(Bytes::from))
    }

    /// The snapshot at the store's current revision, read when the cached
    /// one is older.
    async fn current_snapshot<'a>(&self, cached: &'a mut Option<SharedSnapshot>) -> Result<&'a mut SharedSnapshot> {
        let revision = self.store.revision().await?;
        if cached.as_ref().is_none_or(|c| c.revision != revision) {
            let snap = Arc::new(snapshot(self.store.as_ref()).await?);
            *cached = Some(SharedSnapshot { revision: snap.revision, snapshot: snap, whole: None });
        }
        Ok(cached.as_mut().expect("just filled"))
    }

    /// The NDJSON lines of the changes after `after` (checked with
    /// [`crate::watch::check_start`]) that `scope` admits, with a progress
    /// line whenever nothing was sent for `every`. Ends after an error
    /// line. `who` names the caller in the registry of open watches.
    pub fn watch(
        self: &Arc<Self>,
        after: u64,
        every: Duration,
        who: String,
        scope: Scope,
    ) -> impl Stream<Item = Bytes> + Send + 'static {
        self.start();
        let (registered, at) = self.register(who, &scope, after);
        let state = Watcher {
            scope,
            _registered: registered,
            at,
            hub: self.clone(),
            woken: self.cursor.subscribe(),
            last: after,
            every,
            due: tokio::time::Instant::now() + every,
            done: false,
        };
        futures::stream::unfold(state, |mut w| async move {
            let piece = w.next().await?;
            w.at.store(w.last, std::sync::atomic::Ordering::Relaxed);
            // Progress is due an interval after the last line sent, whatever
            // woke the watcher meanwhile (changes it does not mirror).
            w.due = tokio::time::Instant::now() + w.every;
            Some((piece, w))
        })
    }
}

/// One watcher's position in the hub.
struct Watcher {
    /// What it receives.
    scope: Scope,
    _registered: Registered,
    /// `last`, for the registry.
    at: Arc<std::sync::atomic::AtomicU64>,
    hub: Arc<WatchHub>,
    woken: tokio::sync::watch::Receiver<u64>,
    /// Every event up to this revision was sent.
    last: u64,
    /// How long without a line before a progress line.
    every: Duration,
    /// When a progress line is due if nothing is sent before.
    due: tokio::time::Instant,
    /// An error line was sent: the stream ends.
    done: bool,
}

impl Watcher {
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            self.woken.borrow_and_update();
            let read = {
                let ring = self.hub.ring();
                if ring.from == u64::MAX {
                    None
                } else if self.last < ring.from {
                    Some((Vec::new(), ring.from, true))
                } else {
                    let (lines, at) = ring.after(self.last, &self.scope);
                    Some((lines, at, false))
                }
            };
            let Some((lines, at, behind)) = read else {
                // The reader has not started yet: it wakes us when it has.
                let _ = self.woken.changed().await;
                continue;
            };
            if behind {
                match catch_up(self.hub.store.as_ref(), self.last, at, &self.scope).await {
                    Ok((lines, at)) => {
                        self.last = at;
                        if !lines.is_empty() {
                            return Some(join(lines));
                        }
                        continue;
                    }
                    Err(line) => {
                        self.done = true;
                        return Some(line);
                    }
                }
            }
            self.last = at;
            if !lines.is_empty() {
                self.done = lines.last().is_some_and(is_error);
                return Some(join(lines));
            }
            if tokio::time::timeout_at(self.due, self.woken.changed()).await.is_err() {
                return Some(encode(&WatchEvent::Progress { revision: self.last }));
            }
        }
    }
}

/// One piece of the stream from several lines.
fn join(lines: Vec<Bytes>) -> Bytes {
    if lines.len() == 1 {
        return lines.into_iter().next().unwrap_or_default();
    }
    let mut out = Vec::with_capacity(lines.iter().map(|l| l.len()).sum());
    for l in &lines {
        out.extend_from_slice(l);
    }
    Bytes::from(out)
}

/// For a watcher behind the ring: the lines of the events after `after`
/// up to the ring's start `to`, a page at a time, and where the watcher
/// then stands; an error line when the store cannot give them.
async fn catch_up(store: &dyn Store, after: u64, to: u64, scope: &Scope) -> std::result::Result<(Vec<Bytes>, u64), Bytes> {
    let events = store.events_since(keys::ROOT, after, CATCH_UP_PAGE).await.map_err(|e| error_line(&e))?;
    let full = events.len() >= CATCH_UP_PAGE;
    let mine: Vec<&Event> = events.iter().filter(|e| e.revision <= to).collect();
    let at = match (full, mine.last()) {
        (true, Some(e)) if e.revision < to => e.revision,
        _ => to,
    };
    let mut lines = Vec::new();
    for e in mine {
        match line_of(e) {
            Ok(Some((l, audience))) => {
                if scope.admits(&audience) {
                    lines.push(l);
                }
            }
            Ok(None) => {}
            Err(l) => {
                lines.push(l);
                break;
            }
        }
    }
    Ok((lines, at))
}

fn error_line(e: &StoreError) -> Bytes {
    let code = if matches!(e, StoreError::Compacted { .. }) { "compacted" } else { "internal" };
    encode(&WatchEvent::Error { code: code.into(), message: e.to_string() })
}

/// The line of `e` with its audience, keeping `endpoints` (each known
/// endpoint's network and host) up to date: a deleted endpoint's line is
/// for the watchers of its network and host when the hub knew it, for
/// everyone otherwise.
fn audience_of(e: &Event, endpoints: &mut HashMap<uuid::Uuid, (uuid::Uuid, Arc<str>)>) -> Option<(u64, Bytes, Audience)> {
    let id = || e.kv.key.strip_prefix(keys::ENDPOINTS).and_then(|id| id.parse::<uuid::Uuid>().ok());
    match line_of(e) {
        Ok(Some((l, Audience::Endpoint { network, host }))) => {
            if let Some(id) = id() {
                endpoints.insert(id, (network, host.clone()));
            }
            Some((e.revision, l, Audience::Endpoint { network, host }))
        }
        Ok(Some((l, Audience::All))) => {
            let known = match e.kind {
                tessera_store::EventKind::Delete => id().and_then(|id| endpoints.remove(&id)),
                tessera_store::EventKind::Put => None,
            };
            let audience = known.map_or(Audience::All, |(network, host)| Audience::Endpoint { network, host });
            Some((e.revision, l, audience))
        }
        Ok(None) => None,
        Err(l) => Some((e.revision, l, Audience::All)),
    }
}

/// The hub's reader: follows the store's log from the current revision,
/// pushing each mirrored event's line into the ring. When it falls behind
/// the log (compacted) it starts again from the current revision: watchers
/// behind the ring read the store themselves.
async fn read_log(hub: Weak<WatchHub>, store: Arc<dyn Store>) {
    let mut revisions = store.subscribe();
    // The endpoints as of the revision the reader starts from.
    let (mut cursor, known) = loop {
        match store.range(keys::ENDPOINTS).await {
            Ok(r) => break (r.revision, r.kvs),
            Err(e) => {
                tracing::warn!(error = %e, "watch hub: cannot read the store's endpoints");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    };
    match hub.upgrade() {
        Some(h) => {
            let mut map = h.endpoints.lock().unwrap_or_else(|p| p.into_inner());
            // A value that does not decode is left out: its deletion goes to everyone.
            for e in known.iter().filter_map(|kv| serde_json::from_slice::<tessera_model::Endpoint>(&kv.value).ok()) {
                map.insert(e.id, (e.network, Arc::from(e.host.as_str())));
            }
            drop(map);
            let mut ring = h.ring();
            ring.from = cursor;
            ring.cursor = cursor;
            drop(ring);
            h.cursor.send_replace(cursor);
        }
        None => return,
    }
    loop {
        let seen = *revisions.borrow_and_update();
        let read = store.events_since(keys::ROOT, cursor, HUB_PAGE).await;
        let Some(h) = hub.upgrade() else { return };
        let full = match read {
            Ok(events) => {
                let full = events.len() >= HUB_PAGE;
                let last = events.last().map_or(0, |e| e.revision);
                let lines: Vec<(u64, Bytes, Audience)> = {
                    let mut map = h.endpoints.lock().unwrap_or_else(|p| p.into_inner());
                    events.iter().filter_map(|e| audience_of(e, &mut map)).collect()
                };
                cursor = if full { last } else { cursor.max(seen).max(last) };
                let mut ring = h.ring();
                for (r, l, a) in lines {
                    ring.push(r, l, a);
                }
                ring.cursor = cursor;
                drop(ring);
                h.cursor.send_replace(cursor);
                full
            }
            Err(StoreError::Compacted { .. }) => {
                tracing::warn!(cursor, "watch hub fell behind the store's log; starting again from the current revision");
                let now = store.revision().await.unwrap_or(cursor);
                let mut ring = h.ring();
                ring.lines.clear();
                ring.bytes = 0;
                ring.from = now;
                ring.cursor = now;
                cursor = now;
                drop(ring);
                h.cursor.send_replace(cursor);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "watch hub: cannot read the store's log; trying again");
                drop(h);
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        drop(h);
        if !full && revisions.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn everything() -> Scope {
        Scope::parse(None, None).unwrap()
    }

    fn line(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn the_ring_gives_the_lines_after_a_revision_and_then_its_cursor() {
        let all = everything();
        let mut ring = Ring { from: 10, cursor: 13, lines: VecDeque::new(), bytes: 0 };
        ring.push(11, line("a"), Audience::All);
        ring.push(12, line("b"), Audience::All);
        ring.push(12, line("c"), Audience::All);
        let (lines, at) = ring.after(10, &all);
        assert_eq!(lines, vec![line("a"), line("b"), line("c")]);
        assert_eq!(at, 13, "every event up to the cursor is delivered");
        let (lines, at) = ring.after(11, &all);
        assert_eq!(lines.len(), 2);
        assert_eq!(at, 13);
        assert_eq!(ring.after(13, &all), (vec![], 13));
    }

    #[test]
    fn a_full_ring_drops_whole_revisions_and_says_where_it_starts() {
        let mut ring = Ring { from: 0, cursor: 0, lines: VecDeque::new(), bytes: 0 };
        for i in 0..RING_LINES as u64 {
            ring.push(1 + i / 2, line("x"), Audience::All);
        }
        ring.push(RING_LINES as u64, line("y"), Audience::All);
        // Revision 1's two lines left together.
        assert_eq!(ring.from, 1);
        assert_eq!(ring.lines.len(), RING_LINES - 1);
        assert_eq!(ring.lines.front().map(|(r, _, _)| *r), Some(2));
    }

    #[test]
    fn a_watcher_gets_whole_revisions_in_pieces_of_bounded_size() {
        let all = everything();
        let mut ring = Ring { from: 0, cursor: 0, lines: VecDeque::new(), bytes: 0 };
        for _ in 0..SEND_LINES + 10 {
            ring.push(1, line("x"), Audience::All);
        }
        ring.push(2, line("y"), Audience::All);
        ring.cursor = 2;
        let (lines, at) = ring.after(0, &all);
        assert_eq!(lines.len(), SEND_LINES + 10, "a revision is not split");
        assert_eq!(at, 1);
        assert_eq!(ring.after(1, &all), (vec![line("y")], 2));
    }

    #[test]
    fn a_scoped_watcher_gets_only_its_networks_endpoints_and_moves_past_the_rest() {
        let (mine, other) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        let on = |network, host: &str| Audience::Endpoint { network, host: Arc::from(host) };
        let mut ring = Ring { from: 0, cursor: 0, lines: VecDeque::new(), bytes: 0 };
        ring.push(1, line("network"), Audience::All);
        ring.push(2, line("mine"), on(mine, "h2"));
        ring.push(3, line("other"), on(other, "h2"));
        ring.push(4, line("own"), on(other, "h1"));
        ring.cursor = 5;
        let scope = Scope::parse(Some(&mine.to_string()), Some("h1")).unwrap();
        assert_eq!(ring.after(0, &scope), (vec![line("network"), line("mine"), line("own")], 5));
        assert_eq!(ring.after(3, &scope), (vec![line("own")], 5));
        let none = Scope::parse(Some(""), Some("h9")).unwrap();
        assert_eq!(ring.after(1, &none), (vec![], 5), "the watcher stands at the cursor with nothing to send");
    }

    #[test]
    fn a_scoped_watcher_looks_at_a_bounded_part_of_the_ring_at_a_time() {
        let other = Audience::Endpoint { network: uuid::Uuid::from_u128(2), host: Arc::from("h2") };
        let mut ring = Ring { from: 0, cursor: 0, lines: VecDeque::new(), bytes: 0 };
        for r in 1..=(SCAN_LINES as u64 + 10) {
            ring.push(r, line("x"), other.clone());
        }
        ring.cursor = SCAN_LINES as u64 + 10;
        let none = Scope::parse(Some(""), Some("h1")).unwrap();
        assert_eq!(ring.after(0, &none), (vec![], SCAN_LINES as u64));
        assert_eq!(ring.after(SCAN_LINES as u64, &none), (vec![], SCAN_LINES as u64 + 10));
    }
}
