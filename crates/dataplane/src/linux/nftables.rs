//! nftables: the transactions a plan's nftables actions are applied in (an
//! nfnetlink element batch where it can, `nft -f -` otherwise), and the
//! nftables state carried forward through them so that an observation does
//! not list the tables every time: the state last listed, kept in step with
//! what was applied since, listed again in the background once it is old,
//! and the policy map elements last read or written, kept while their
//! digests agree.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::io::AsyncWriteExt;

use super::common::{Netfilter, NetfilterFailure};
use crate::error::DataplaneError;
use crate::names::{DIGESTS, POLICY_TABLE};
use crate::nfnetlink::element_batch;
use crate::nft::{parse_policy_listing, parse_tables, script, shorten};
use crate::observed::{element_hash, map_digest, MapElement, NftState, ObservedMap};
use crate::op::KernelOp;
use crate::policy::derive_digests;

/// The `nft` program, looked up in `PATH`.
const NFT: &str = "nft";

/// How long an nftables state may be carried forward from writes before it
/// is listed again (in the background; see [`NftTables::observe`]): with
/// the periodic reconcile, what bounds how long a change made behind
/// Tessera's back (an `nft flush`) goes unrepaired.
const NFT_RELIST_AFTER: Duration = Duration::from_secs(5);

/// The nftables state this data plane carries forward, and its policy map
/// cache.
#[derive(Default)]
pub(super) struct NftTables {
    /// The elements of the policy maps as this data plane last read or
    /// wrote them, with their digest: used while the digest in the comment
    /// of the rule that looks a map up is the same, so that big maps are not
    /// listed on every observation.
    policy_cache: RefCell<HashMap<String, CachedMap>>,
    /// The nftables state as last listed, kept in step with the element
    /// changes applied since (see [`NftTables::observe`]).
    nft_seen: RefCell<Option<(NftState, Instant)>>,
    /// How many nftables transactions were tried: a listing started before
    /// one is out of date.
    nft_generation: Cell<u64>,
    /// The listing in the background (see [`NftTables::relisted`]).
    relisting: RefCell<Relisting>,
    /// Set when part of the tables was taken away behind the data plane's
    /// back (see `tamper`): the next observation lists them again.
    stale: Arc<std::sync::atomic::AtomicBool>,
}

/// A policy map as last read or written, and its digest.
struct CachedMap {
    digest: u64,
    elements: Arc<BTreeSet<MapElement>>,
}

impl CachedMap {
    fn of(elements: impl IntoIterator<Item = MapElement>) -> Self {
        let elements: BTreeSet<MapElement> = elements.into_iter().collect();
        CachedMap { digest: map_digest(&elements), elements: Arc::new(elements) }
    }
}

impl NftTables {
    /// The flag that makes the next observation list the tables again.
    pub(super) fn stale_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.stale.clone()
    }

    /// The three tables: `inet tessera` and `bridge tessera` listed in full;
    /// of `inet tessera_policy`, the chain names, the maps (tersely) and the
    /// `digests` map, all cheap whatever the maps hold. A policy map's
    /// elements come from the cache when the digest recorded for it is the
    /// one the cache holds, and are left unknown otherwise (the planner then
    /// refills the map if it must change it).
    ///
    /// Listing costs an `nft` process per table (10–20 ms together), the
    /// bulk of an observation; so the state last listed is carried forward
    /// through the element changes applied since (what attaching and
    /// detaching endpoints and rule edits write), and listed again at once
    /// after any other nftables change or a failed transaction. Once it is
    /// [`NFT_RELIST_AFTER`] old, a listing runs in the background and
    /// replaces it when done, unless a transaction came in between (then
    /// another is tried as long after); at three times that age it is
    /// listed before the observation returns.
    pub(super) async fn observe(&self) -> Result<NftState, DataplaneError> {
        if self.stale.swap(false, std::sync::atomic::Ordering::SeqCst) {
            // Also overtakes a background listing that started before.
            self.nft_generation.set(self.nft_generation.get() + 1);
            *self.nft_seen.borrow_mut() = None;
        }
        let age = self.nft_seen.borrow().as_ref().map(|(_, at)| at.elapsed());
        let listed = match age {
            Some(age) if age < NFT_RELIST_AFTER => None,
            Some(age) => match self.relisted() {
                Some(state) => Some(state),
                None if age >= NFT_RELIST_AFTER * 3 => {
                    let started = Instant::now();
                    let state = self.list_state().await?;
                    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
                    tracing::debug!(elapsed_ms, "nftables listed in the foreground (background listings overtaken)");
                    Some(state)
                }
                None => None,
            },
            None => Some(self.list_state().await?),
        };
        if let Some(state) = listed {
            *self.nft_seen.borrow_mut() = Some((state, Instant::now()));
        }
        Ok(self.nft_seen.borrow().as_ref().expect("listed or carried forward").0.clone())
    }

    /// The state listed in the background, once a listing that no
    /// transaction came after is done; starts a listing when none runs and
    /// none started in the last [`NFT_RELIST_AFTER`] (under a stream of
    /// changes, listings keep being overtaken: one is tried that often, and
    /// [`NftTables::observe`] lists in the foreground when they all are).
    /// The listing's `nft` processes run beside the data plane's other work,
    /// at the lowest CPU priority, so a change does not wait for them.
    fn relisted(&self) -> Option<NftState> {
        let mut relist = self.relisting.borrow_mut();
        let generation = self.nft_generation.get();
        if let Some((started, handle)) = relist.running.take() {
            if !handle.is_finished() {
                relist.running = Some((started, handle));
                return None;
            }
            let listed = handle.now_or_never().and_then(Result::ok).and_then(Result::ok);
            if let Some(state) = listed.filter(|_| started == generation) {
                return Some(self.with_cached_elements(state));
            }
        }
        if relist.last_start.is_none_or(|at| at.elapsed() >= NFT_RELIST_AFTER) {
            relist.start(generation);
        }
        None
    }

    /// After a transaction, when a listing is due and none runs, one starts
    /// at once: it then reads the tables as this transaction left them. A
    /// listing started by an observation is overtaken by the transaction of
    /// its own reconcile; under a stream of changes every one was, and each
    /// [`NftTables::observe`] after `3 × NFT_RELIST_AFTER` listed in the
    /// foreground, in the path of a change (40 ms at 50,000 rules).
    fn relist_after_transaction(&self) {
        let due = self.nft_seen.borrow().as_ref().is_some_and(|(_, at)| at.elapsed() >= NFT_RELIST_AFTER);
        let mut relist = self.relisting.borrow_mut();
        if !due || relist.running.as_ref().is_some_and(|(_, handle)| !handle.is_finished()) {
            return;
        }
        relist.start(self.nft_generation.get());
    }

    /// `state` (parsed from listings) with the policy maps' elements from
    /// the cache where their digests agree.
    fn with_cached_elements(&self, mut state: NftState) -> NftState {
        let mut cache = self.policy_cache.borrow_mut();
        cache.retain(|name, c| state.policy.maps.get(name).is_some_and(|m| m.digest == Some(c.digest)));
        for (name, m) in state.policy.maps.iter_mut() {
            m.elements = cache.get(name).map(|c| c.elements.clone());
        }
        state
    }

    /// Lists the three tables (no carrying forward).
    async fn list_state(&self) -> Result<NftState, DataplaneError> {
        Ok(self.with_cached_elements(parse_listings(&nft_listings(Urgency::Now).await?)?))
    }

    /// Applies a plan's nftables actions as one `nft -f -` transaction. When
    /// it fails, the tables are read again, deletions of what is already
    /// gone are left out, and it is retried once. The policy map cache
    /// follows what the kernel holds.
    pub(super) async fn apply<'a>(
        &self,
        netfilter: &Netfilter,
        block: &[&'a KernelOp],
    ) -> Vec<(&'a KernelOp, Result<(), DataplaneError>)> {
        let outcome = match self.elements_netlink(netfilter, block) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "policy element batch failed; running it with nft");
                self.transact(block).await
            }
            None => self.transact(block).await,
        };
        match &outcome {
            Ok(()) => {
                self.seen_release(block);
                self.cache_follow(block);
            }
            Err(_) => self.cache_forget(block),
        }
        self.seen_follow(block, outcome.is_ok());
        self.relist_after_transaction();
        block.iter().map(|a| (*a, outcome.clone().map_err(|message| DataplaneError::Nft { op: "apply", message }))).collect()
    }

    /// Sends `block` as a batch of element messages when it only changes
    /// policy map elements (see [`crate::nfnetlink`]); `None` when it does
    /// more, or is too big.
    fn elements_netlink(&self, netfilter: &Netfilter, block: &[&KernelOp]) -> Option<Result<(), String>> {
        let started = Instant::now();
        let sent = netfilter.with(|s| match element_batch(block, s.next_seq()) {
            Err(unsupported) => Ok(Err(unsupported)),
            Ok(messages) => s.transact(&messages).map(|()| Ok(messages.bytes().len())),
        });
        let result = match sent {
            Ok(Err(_)) => return None,
            Ok(Ok(bytes)) => {
                tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, bytes, "nftables element batch");
                Ok(())
            }
            Err(NetfilterFailure::Open(e)) => Err(format!("netfilter netlink socket: {e}")),
            Err(NetfilterFailure::Request(e)) => Err(format!("nftables element batch: {e}")),
        };
        Some(result)
    }

    /// Runs `block` as one `nft -f -` transaction; when it fails, the tables
    /// are read again, deletions of what is already gone are left out, and
    /// it is retried once.
    async fn transact(&self, block: &[&KernelOp]) -> Result<(), String> {
        let text = script(block, &|_| false);
        let started = Instant::now();
        let first_try = nft_run(&["-f", "-"], Some(&text)).await;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if text.len() <= 4096 {
                tracing::debug!(elapsed_ms = ms, ok = first_try.is_ok(), script = %text, "nft transaction");
            } else {
                tracing::debug!(elapsed_ms = ms, ok = first_try.is_ok(), bytes = text.len(), "nft transaction");
            }
        }
        match first_try {
            Ok(_) => Ok(()),
            Err(first) => match self.list_state().await {
                Err(e) => Err(format!("{first}; then {e}")),
                Ok(now) => {
                    let trimmed: Vec<KernelOp> = block.iter().filter_map(|a| without_absent(a, &now)).collect();
                    if trimmed.len() == block.len() && trimmed.iter().zip(block).all(|(a, b)| a == *b) {
                        Err(first)
                    } else {
                        let refs: Vec<&KernelOp> = trimmed.iter().collect();
                        nft_run(&["-f", "-"], Some(&script(&refs, &|_| false)))
                            .await
                            .map(|_| ())
                            .map_err(|e| format!("{first}; retried: {e}"))
                    }
                }
            },
        }
    }

    /// Carries the listed nftables state through a transaction that
    /// succeeded: set element changes and the policy table's chains, maps,
    /// map elements and digests are applied to it (the policy map elements
    /// from the cache, which [`NftTables::cache_follow`] has already brought in
    /// line); the skeleton's installation, or a failure, drops it so that the
    /// next observation lists the tables.
    fn seen_follow(&self, block: &[&KernelOp], ok: bool) {
        self.nft_generation.set(self.nft_generation.get() + 1);
        let mut seen = self.nft_seen.borrow_mut();
        let Some((state, _)) = seen.as_mut() else { return };
        if !ok || block.iter().any(|a| !a.is_nft() || matches!(a, KernelOp::NftTablesInstall)) {
            *seen = None;
            return;
        }
        let mut policy_changed = false;
        for a in block {
            match a {
                KernelOp::NftSetElementAdd(e) => {
                    state.elements.insert(e.clone());
                }
                KernelOp::NftSetElementDelete(e) => {
                    state.elements.remove(e);
                }
                KernelOp::NftMapAdd { name, family } => {
                    policy_changed = true;
                    state.policy.maps.insert(name.clone(), ObservedMap { family: *family, digest: None, elements: None });
                }
                KernelOp::NftMapDelete { name } => {
                    policy_changed = true;
                    state.policy.maps.remove(name);
                }
                KernelOp::NftChainInstall { name, .. } => {
                    policy_changed = true;
                    state.policy.chains.entry(name.clone()).or_default();
                }
                KernelOp::NftChainDelete { name } => {
                    policy_changed = true;
                    state.policy.chains.remove(name);
                }
                KernelOp::NftDigestsUpdate { deletes, adds } => {
                    policy_changed = true;
                    for (k, _) in deletes {
                        state.policy.digests.remove(k);
                    }
                    state.policy.digests.extend(adds.iter().copied());
                }
                KernelOp::NftMapElementsAdd { .. } | KernelOp::NftMapElementsDelete { .. } | KernelOp::NftMapFlush { .. } => {
                    policy_changed = true;
                }
                _ => {}
            }
        }
        if policy_changed {
            derive_digests(&mut state.policy);
            let cache = self.policy_cache.borrow();
            for (name, m) in state.policy.maps.iter_mut() {
                m.elements = cache.get(name).filter(|c| m.digest == Some(c.digest)).map(|c| c.elements.clone());
            }
        }
    }

    /// Lets go of the carried-forward state's share of the cached elements
    /// of the maps `block` changes, so that [`NftTables::cache_follow`] changes
    /// them in place rather than copying a 50,000-element map for a
    /// one-element change ([`NftTables::seen_follow`] shares them again).
    fn seen_release(&self, block: &[&KernelOp]) {
        let mut seen = self.nft_seen.borrow_mut();
        let Some((state, _)) = seen.as_mut() else { return };
        for a in block {
            if let KernelOp::NftMapElementsAdd { map, .. } | KernelOp::NftMapElementsDelete { map, .. } = a {
                if let Some(m) = state.policy.maps.get_mut(map) {
                    m.elements = None;
                }
            }
        }
    }

    /// Brings the policy map cache in line with a transaction that succeeded.
    fn cache_follow(&self, block: &[&KernelOp]) {
        let mut cache = self.policy_cache.borrow_mut();
        for a in block {
            match a {
                KernelOp::NftTablesInstall => cache.clear(),
                KernelOp::NftMapAdd { name, .. } => {
                    cache.insert(name.clone(), CachedMap::of([]));
                }
                KernelOp::NftMapDelete { name } => {
                    cache.remove(name);
                }
                KernelOp::NftMapFlush { map } => {
                    cache.insert(map.clone(), CachedMap::of([]));
                }
                KernelOp::NftMapElementsAdd { map, elements } => {
                    if let Some(c) = cache.get_mut(map) {
                        let set = Arc::make_mut(&mut c.elements);
                        for e in elements {
                            if set.insert(e.clone()) {
                                c.digest = c.digest.wrapping_add(element_hash(e));
                            }
                        }
                    }
                }
                KernelOp::NftMapElementsDelete { map, elements } => {
                    if let Some(c) = cache.get_mut(map) {
                        let set = Arc::make_mut(&mut c.elements);
                        for e in elements {
                            if set.remove(e) {
                                c.digest = c.digest.wrapping_sub(element_hash(e));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Forgets the cached maps a failed transaction was about.
    fn cache_forget(&self, block: &[&KernelOp]) {
        let mut cache = self.policy_cache.borrow_mut();
        for a in block {
            match a {
                KernelOp::NftTablesInstall => cache.clear(),
                KernelOp::NftMapAdd { name, .. } | KernelOp::NftMapDelete { name } => {
                    cache.remove(name);
                }
                KernelOp::NftMapElementsAdd { map, .. }
                | KernelOp::NftMapElementsDelete { map, .. }
                | KernelOp::NftMapFlush { map } => {
                    cache.remove(map);
                }
                _ => {}
            }
        }
    }
}

/// Runs `nft ARGS`, feeding `input` on standard input; returns standard
/// output, or standard error as the error.
async fn nft_run(args: &[&str], input: Option<&str>) -> Result<String, String> {
    nft_run_as(args, input, Urgency::Now).await
}

/// Whether an `nft` process is in the path of a change, or runs in the
/// background at the lowest CPU priority (its few milliseconds of CPU then
/// yield to the planning and applying of a change, on this host's agent and
/// on any other sharing the machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Urgency {
    Now,
    Background,
}

/// [`nft_run`], with the `nft` process run as `urgency` says.
async fn nft_run_as(args: &[&str], input: Option<&str>, urgency: Urgency) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(NFT);
    cmd.args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {NFT}: {e}"))?;
    if let (Urgency::Background, Some(pid)) = (urgency, child.id()) {
        super::netns::lowest_cpu_priority_of(pid);
    }
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).await.map_err(|e| format!("writing to {NFT}: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("waiting for {NFT}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(shorten(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// A listing of the nftables state in the background.
#[derive(Default)]
struct Relisting {
    /// The one running, and the transaction generation it started at.
    running: Option<(u64, tokio::task::JoinHandle<Result<NftState, DataplaneError>>)>,
    /// When the last one started.
    last_start: Option<Instant>,
}

impl Relisting {
    /// Starts a listing at transaction generation `generation`.
    fn start(&mut self, generation: u64) {
        self.last_start = Some(Instant::now());
        self.running = Some((generation, tokio::spawn(background_state())));
    }
}

/// The three tables as a background listing reads them: the `nft`
/// processes and the parsing of their output (thousands of elements, 5-20
/// ms on a busy host) run at the lowest CPU priority, beside the data
/// plane's thread, whose next observation picks the state up.
async fn background_state() -> Result<NftState, DataplaneError> {
    let listings = nft_listings(Urgency::Background).await?;
    super::netns::in_background("tessera-nft-parse", move || parse_listings(&listings))
        .await
        .map_err(|e| DataplaneError::Nft { op: "list", message: format!("parsing thread: {e}") })?
}

/// The state of the three tables from their listings (the policy maps'
/// elements not filled in: see [`NftTables::with_cached_elements`]).
fn parse_listings(l: &NftListings) -> Result<NftState, DataplaneError> {
    let nft_err = |message: String| DataplaneError::Nft { op: "list", message };
    let listing = match &l.digests {
        None => None,
        Some(digests) => Some(
            parse_policy_listing(l.chains.as_deref().unwrap_or_default(), l.maps.as_deref().unwrap_or_default(), Some(digests))
                .map_err(nft_err)?,
        ),
    };
    parse_tables(l.inet.as_deref(), l.bridge.as_deref(), listing.as_ref()).map_err(nft_err)
}

/// The listings the nftables state is read from (`None`: no such table).
struct NftListings {
    inet: Option<String>,
    bridge: Option<String>,
    digests: Option<String>,
    chains: Option<String>,
    maps: Option<String>,
}

/// Lists the three tables: `inet tessera` and `bridge tessera` in full; of
/// `inet tessera_policy`, the `digests` map, the chains and the maps
/// (tersely). Five small listings, each an `nft` process, side by side.
async fn nft_listings(urgency: Urgency) -> Result<NftListings, DataplaneError> {
    let (inet, bridge, digests, chains, maps) = futures::try_join!(
        nft_list_as(&["-j", "list", "table", "inet", "tessera"], urgency),
        nft_list_as(&["-j", "list", "table", "bridge", "tessera"], urgency),
        nft_list_as(&["-j", "list", "map", "inet", POLICY_TABLE, DIGESTS], urgency),
        nft_list_as(&["-j", "list", "chains", "inet"], urgency),
        nft_list_as(&["-j", "-t", "list", "maps", "inet"], urgency),
    )?;
    Ok(NftListings { inet, bridge, digests, chains, maps })
}

/// `nft ARGS` for a listing; `None` when the table or map does not exist.
pub(super) async fn nft_list(args: &[&str]) -> Result<Option<String>, DataplaneError> {
    nft_list_as(args, Urgency::Now).await
}

/// [`nft_list`], with the `nft` process run as `urgency` says.
async fn nft_list_as(args: &[&str], urgency: Urgency) -> Result<Option<String>, DataplaneError> {
    match nft_run_as(args, None, urgency).await {
        Ok(out) => Ok(Some(out)),
        Err(e) if e.contains("No such file or directory") => Ok(None),
        Err(message) => Err(DataplaneError::Nft { op: "list", message }),
    }
}

/// `nft delete table FAMILY NAME`; a table that is not there is no error.
pub(super) async fn nft_delete_table(family: &str, name: &str) -> Result<(), DataplaneError> {
    match nft_run(&["delete", "table", family, name], None).await {
        Ok(_) => Ok(()),
        Err(e) if e.contains("No such file or directory") => Ok(()),
        Err(message) => Err(DataplaneError::Nft { op: "delete table", message }),
    }
}

/// `action` without the deletions of what `now` no longer holds (`None`:
/// nothing left of it).
fn without_absent(action: &KernelOp, now: &NftState) -> Option<KernelOp> {
    match action {
        KernelOp::NftSetElementDelete(e) if !now.elements.contains(e) => None,
        KernelOp::NftChainDelete { name } if !now.policy.chains.contains_key(name) => None,
        KernelOp::NftMapDelete { name } if !now.policy.maps.contains_key(name) => None,
        KernelOp::NftMapElementsDelete { map, elements } => {
            let have = now.policy.maps.get(map)?;
            let Some(known) = &have.elements else { return Some(action.clone()) };
            let keys: BTreeSet<_> = known.iter().map(|e| e.key).collect();
            let still: Vec<MapElement> = elements.iter().filter(|e| keys.contains(&e.key)).cloned().collect();
            (!still.is_empty()).then(|| KernelOp::NftMapElementsDelete { map: map.clone(), elements: still })
        }
        KernelOp::NftDigestsUpdate { deletes, adds } => {
            let still: Vec<(u128, u128)> = deletes.iter().filter(|(k, _)| now.policy.digests.contains_key(k)).copied().collect();
            Some(KernelOp::NftDigestsUpdate { deletes: still, adds: adds.clone() })
        }
        other => Some(other.clone()),
    }
}
