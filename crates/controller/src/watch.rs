//! Snapshots and watches of the objects agents mirror, translated from the
//! store's key-value events.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use tessera_model::watch::{Object, ObjectRef, Snapshot, WatchEvent};
use tessera_model::FieldError;
use tessera_store::{Event, EventKind, KeyValue, Store, StoreError};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::keys;

/// How often a quiet watch sends a progress event, unless the watcher asks
/// for more often.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The most often a watcher may ask for progress.
pub const PROGRESS_MIN: Duration = Duration::from_millis(100);

/// The progress interval a watcher asked for (`progress_ms`), within
/// [`PROGRESS_MIN`] and [`PROGRESS_EVERY`].
pub fn progress_every(asked_ms: Option<u64>) -> Duration {
    asked_ms.map_or(PROGRESS_EVERY, |ms| Duration::from_millis(ms).clamp(PROGRESS_MIN, PROGRESS_EVERY))
}

/// The most networks a scoped snapshot or watch may name (their IDs fit in
/// a request line); a host that needs more asks for everything.
pub const MAX_SCOPE_NETWORKS: usize = 1024;

/// Which endpoints a snapshot or watch carries: those of the networks it
/// names and those of the calling host, or every one. Every other object
/// (networks, hosts, policies, floating IPs, services) goes to every
/// watcher: a host compiles the fabric's topology from them.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `None`: every endpoint.
    networks: Option<HashSet<Uuid>>,
    /// The calling host, whose own endpoints it always receives.
    host: Option<Arc<str>>,
}

impl Scope {
    /// The scope a request asks for: `networks` is the comma-separated
    /// network IDs of the `networks` parameter (absent: everything; empty:
    /// only the host's own endpoints), `host` the calling host, if a host
    /// calls.
    pub fn parse(networks: Option<&str>, host: Option<&str>) -> Result<Scope> {
        let Some(list) = networks else { return Ok(Scope::default()) };
        let mut ids = HashSet::new();
        for (i, part) in list.split(',').filter(|p| !p.is_empty()).enumerate() {
            if i >= MAX_SCOPE_NETWORKS {
                return Err(FieldError::new(
                    "networks",
                    format!("names more than {MAX_SCOPE_NETWORKS} networks: leave it out to receive every endpoint"),
                )
                .into());
            }
            let id =
                part.parse::<Uuid>().map_err(|e| FieldError::new("networks", format!("{part:?} is not a network ID: {e}")))?;
            ids.insert(id);
        }
        Ok(Scope { networks: Some(ids), host: host.map(Arc::from) })
    }

    /// How many networks the scope names (`None`: every network).
    pub fn networks(&self) -> Option<usize> {
        self.networks.as_ref().map(HashSet::len)
    }

    /// Whether an endpoint of `network` on `host` is in the scope.
    pub fn keeps(&self, network: Uuid, host: &str) -> bool {
        match &self.networks {
            None => true,
            Some(ids) => ids.contains(&network) || self.host.as_deref() == Some(host),
        }
    }

    /// Whether a line for `audience` is sent to a watcher of this scope.
    pub(crate) fn admits(&self, audience: &Audience) -> bool {
        match audience {
            Audience::All => true,
            Audience::Endpoint { network, host } => self.keeps(*network, host),
        }
    }
}

/// Who a watch line is for: every watcher, or those whose scope holds an
/// endpoint of `network` on `host`.
#[derive(Debug, Clone)]
pub(crate) enum Audience {
    All,
    Endpoint { network: Uuid, host: Arc<str> },
}

fn object_of(kv: &KeyValue) -> Result<Option<Object>> {
    let de = |e: serde_json::Error| Error::Corrupt { key: kv.key.clone(), reason: e.to_string() };
    let k = kv.key.as_str();
    Ok(Some(if k.starts_with(keys::NETWORKS) {
        Object::Network(serde_json::from_slice(&kv.value).map_err(de)?)
    } else if k.starts_with(keys::ENDPOINTS) {
        Object::Endpoint(serde_json::from_slice(&kv.value).map_err(de)?)
    } else if k.starts_with(keys::HOSTS) {
        Object::Host(serde_json::from_slice(&kv.value).map_err(de)?)
    } else if k.starts_with(keys::POLICIES) {
        Object::Policy(serde_json::from_slice(&kv.value).map_err(de)?)
    } else if k.starts_with(keys::POLICY_RULES) {
        Object::PolicyRules(serde_json::from_slice(&kv.value).map_err(de)?)
    } else if k.starts_with(keys::FLOATING_IPS) {
        Object::FloatingIp(serde_json::from_slice(&kv.value).map_err(de)?)
    } else if k.starts_with(keys::SERVICES) {
        Object::Service(serde_json::from_slice(&kv.value).map_err(de)?)
    } else {
        return Ok(None);
    }))
}

fn ref_of(key: &str) -> Option<ObjectRef> {
    if let Some(rest) = key.strip_prefix(keys::POLICY_RULES) {
        return Some(ObjectRef { kind: "policy_rules".into(), id: rest.to_string() });
    }
    let (kind, prefix) = keys::MIRRORED.into_iter().find(|(_, p)| key.starts_with(p))?;
    Some(ObjectRef { kind: kind.into(), id: key[prefix.len()..].to_string() })
}

/// All mirrored objects, consistent at one revision.
pub async fn snapshot(store: &dyn Store) -> Result<Snapshot> {
    let r = store.range(keys::ROOT).await?;
    let mut s = Snapshot { revision: r.revision, ..Default::default() };
    let mut headers = Vec::new();
    let mut chunks: std::collections::HashMap<uuid::Uuid, Vec<tessera_model::watch::PolicyRules>> = Default::default();
    for kv in &r.kvs {
        if kv.key == keys::CLUSTER {
            s.cluster = std::str::from_utf8(&kv.value).ok().and_then(|v| v.parse().ok());
            continue;
        }
        if kv.key == keys::STORE_EPOCH {
            s.epoch = std::str::from_utf8(&kv.value).ok().and_then(|v| v.parse().ok());
            continue;
        }
        match object_of(kv)? {
            Some(Object::Network(n)) => s.networks.push(n),
            Some(Object::Endpoint(e)) => std::sync::Arc::make_mut(&mut s.endpoints).push(e),
            Some(Object::Host(h)) => s.hosts.push(h),
            Some(Object::Policy(p)) => headers.push(p),
            Some(Object::PolicyRules(c)) => chunks.entry(c.policy).or_default().push(c),
            Some(Object::FloatingIp(f)) => s.floating_ips.push(f),
            Some(Object::Service(v)) => s.services.push(v),
            None => {}
        }
    }
    for h in headers {
        let mine = chunks.remove(&h.id).unwrap_or_default();
        s.add_policy(h, mine);
    }
    Ok(s)
}

/// Whether a watch may start after revision `after`: refused when the
/// store is of another cluster than `cluster` (when given: 409), when its
/// events are discarded ([`Error::Compacted`], with the current revision),
/// when `epoch` is given and is not the store's (a revision of the store
/// this one was migrated from: [`Error::Replaced`]), or when it is beyond
/// the current revision (a revision of another store).
pub async fn check_start(store: &dyn Store, after: u64, cluster: Option<uuid::Uuid>, epoch: Option<uuid::Uuid>) -> Result<()> {
    if let Some(theirs) = cluster {
        let mine = store.get(keys::CLUSTER).await?.and_then(|kv| String::from_utf8(kv.value).ok());
        if mine.as_deref().and_then(|m| m.parse::<uuid::Uuid>().ok()) != Some(theirs) {
            return Err(Error::Conflict(format!(
                "this controller's store is of cluster {}, not {theirs}: take a snapshot",
                mine.as_deref().unwrap_or("(none)")
            )));
        }
    }
    if let Some(theirs) = epoch {
        let mine = store.get(keys::STORE_EPOCH).await?.and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok());
        if mine != Some(theirs) {
            let revision = store.revision().await?;
            return Err(Error::Replaced { requested: after, epoch: theirs, revision });
        }
    }
    let revision = store.revision().await?;
    if after > revision {
        return Err(tessera_model::FieldError::new(
            "after",
            format!("revision {after} is beyond the current revision {revision}: take a snapshot and watch from its revision"),
        )
        .into());
    }
    match store.events_since(keys::ROOT, after, 1).await {
        Err(StoreError::Compacted { requested, compacted }) => Err(Error::Compacted { requested, compacted, revision }),
        Err(e) => Err(e.into()),
        Ok(_) => Ok(()),
    }
}

/// One watch event as the NDJSON line watchers send.
pub(crate) fn encode(ev: &WatchEvent) -> Bytes {
    let mut line = serde_json::to_vec(ev).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// How an error line starts (a watcher's stream ends after one).
const ERROR_LINE: &[u8] = b"{\"kind\":\"error\"";

/// Whether `line` is an error line.
pub(crate) fn is_error(line: &Bytes) -> bool {
    line.starts_with(ERROR_LINE)
}

/// The line of a store event and who it is for: `None` for a key agents do
/// not mirror, an error line (`Err`) for a value that does not decode. A
/// deleted endpoint's line is for everyone (the event no longer says its
/// network); the hub narrows it when it knows the endpoint.
pub(crate) fn line_of(ev: &Event) -> std::result::Result<Option<(Bytes, Audience)>, Bytes> {
    let (event, audience) = match ev.kind {
        EventKind::Put => match object_of(&ev.kv) {
            Ok(Some(object)) => {
                let audience = match &object {
                    Object::Endpoint(e) => Audience::Endpoint { network: e.network, host: Arc::from(e.host.as_str()) },
                    _ => Audience::All,
                };
                (Some(WatchEvent::Put { revision: ev.revision, object: Box::new(object) }), audience)
            }
            Ok(None) => (None, Audience::All),
            Err(e) => return Err(encode(&WatchEvent::Error { code: "internal".into(), message: e.to_string() })),
        },
        EventKind::Delete => {
            (ref_of(&ev.kv.key).map(|object| WatchEvent::Delete { revision: ev.revision, object }), Audience::All)
        }
    };
    Ok(event.as_ref().map(|e| (encode(e), audience)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_is_known_as_one() {
        let line = encode(&WatchEvent::Error { code: "internal".into(), message: "x".into() });
        assert!(is_error(&line), "{line:?}");
        assert!(!is_error(&encode(&WatchEvent::Progress { revision: 1 })));
    }

    #[test]
    fn a_scope_keeps_its_networks_endpoints_and_its_hosts_own() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let scope = Scope::parse(Some(&format!("{a}")), Some("h1")).unwrap();
        assert!(scope.keeps(a, "h2"));
        assert!(!scope.keeps(b, "h2"));
        assert!(scope.keeps(b, "h1"), "a host's own endpoints");
        assert!(scope.admits(&Audience::All));
        assert_eq!(scope.networks(), Some(1));
        let everything = Scope::parse(None, Some("h1")).unwrap();
        assert!(everything.keeps(b, "h2"));
        assert_eq!(everything.networks(), None);
        let own = Scope::parse(Some(""), Some("h1")).unwrap();
        assert!(!own.keeps(a, "h2") && own.keeps(a, "h1"));
    }

    #[test]
    fn a_bad_scope_is_refused_naming_the_field() {
        let e = Scope::parse(Some("x"), None).unwrap_err().to_string();
        assert!(e.contains("networks") && e.contains("\"x\""), "{e}");
        let many: Vec<String> = (0..=MAX_SCOPE_NETWORKS as u128).map(|i| Uuid::from_u128(i).to_string()).collect();
        let e = Scope::parse(Some(&many.join(",")), None).unwrap_err().to_string();
        assert!(e.contains("more than 1024"), "{e}");
    }
}
