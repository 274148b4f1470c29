//! The mirrored intent on disk, so that an agent restarted while the
//! controller is away still knows it.
//!
//! A snapshot holding a 50,000-rule policy is about 9 MB of JSON, and
//! writing it whole after every change costs a fifth of a second of CPU
//! that the next change would wait for. So policies are saved as their
//! chunks of rules, one file each (`chunks/<uuid>.json`), beside one file
//! for the rest (`snapshot.json`: networks, endpoints, hosts, and each
//! policy's chunk files in order). A chunk the mirror still shares with the
//! last save (the same `Arc`: chunks that did not change are never copied)
//! is not written again, so a one-rule change writes one chunk file and the
//! small main file.
//!
//! Crash safety: new chunk files are written first, then the main file is
//! replaced atomically (written aside, then renamed), then chunk files it no
//! longer names are removed. A crash at any point leaves a main file whose
//! chunk files all exist.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tessera_model::watch::Snapshot;
use tessera_model::{Endpoint, FqName, Host, Network, Policy, RuleChunk, Rules};
use uuid::Uuid;

/// The main file.
pub fn snapshot_file(state_dir: &Path) -> PathBuf {
    state_dir.join("snapshot.json")
}

fn chunk_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("chunks")
}

/// What `snapshot.json` holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    revision: u64,
    #[serde(default)]
    cluster: Option<Uuid>,
    #[serde(default)]
    epoch: Option<Uuid>,
    networks: Vec<Network>,
    endpoints: std::sync::Arc<Vec<Endpoint>>,
    hosts: Vec<Host>,
    policies: Vec<SavedPolicy>,
    #[serde(default)]
    floating_ips: Vec<tessera_model::FloatingIp>,
    #[serde(default)]
    services: Vec<tessera_model::Service>,
}

#[derive(Serialize, Deserialize)]
struct SavedPolicy {
    id: Uuid,
    fq_name: FqName,
    /// The names of its chunk files, in rule order.
    chunks: Vec<String>,
}

/// Writes snapshots to a state directory, remembering which chunks are on
/// disk already.
pub struct SnapshotFiles {
    dir: PathBuf,
    /// The chunks of the last save and their files, by the address of the
    /// chunk (held, so that the address is not reused).
    written: HashMap<usize, (Arc<RuleChunk>, String)>,
}

/// What one save wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveStats {
    pub chunks_written: usize,
    pub chunks_removed: usize,
}

impl SnapshotFiles {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        SnapshotFiles { dir: state_dir.into(), written: HashMap::new() }
    }

    /// Saves `snap`: the chunks not on disk yet, then the main file, then
    /// the removal of chunk files no longer named.
    pub fn save(&mut self, snap: &Snapshot) -> io::Result<SaveStats> {
        let chunks = chunk_dir(&self.dir);
        std::fs::create_dir_all(&chunks)?;
        let mut now: HashMap<usize, (Arc<RuleChunk>, String)> = HashMap::new();
        let mut policies = Vec::with_capacity(snap.policies.len());
        let mut chunks_written = 0;
        for p in &snap.policies {
            let mut names = Vec::with_capacity(p.rules.chunks().len());
            for c in p.rules.chunks() {
                let key = Arc::as_ptr(c) as usize;
                let name = match self.written.get(&key).or_else(|| now.get(&key)) {
                    Some((_, name)) => name.clone(),
                    None => {
                        let name = format!("{}.json", Uuid::new_v4());
                        write_atomically(&chunks.join(&name), &serde_json::to_vec(&**c).map_err(io::Error::other)?)?;
                        chunks_written += 1;
                        name
                    }
                };
                now.insert(key, (c.clone(), name.clone()));
                names.push(name);
            }
            policies.push(SavedPolicy { id: p.id, fq_name: p.fq_name.clone(), chunks: names });
        }
        let main = Saved {
            revision: snap.revision,
            cluster: snap.cluster,
            epoch: snap.epoch,
            networks: snap.networks.clone(),
            endpoints: snap.endpoints.clone(),
            hosts: snap.hosts.clone(),
            policies,
            floating_ips: snap.floating_ips.clone(),
            services: snap.services.clone(),
        };
        write_atomically(&snapshot_file(&self.dir), &serde_json::to_vec(&main).map_err(io::Error::other)?)?;
        self.written = now;
        // Files of earlier saves, and of earlier runs of the agent.
        let named: HashSet<&str> = self.written.values().map(|(_, n)| n.as_str()).collect();
        let mut chunks_removed = 0;
        for entry in std::fs::read_dir(&chunks)? {
            let entry = entry?;
            let name = entry.file_name();
            if !named.contains(name.to_string_lossy().as_ref()) {
                std::fs::remove_file(entry.path())?;
                chunks_removed += 1;
            }
        }
        Ok(SaveStats { chunks_written, chunks_removed })
    }
}

/// Writes `bytes` to `path` through a file beside it and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The snapshot saved in `state_dir`, if there is a complete one. A main
/// file written whole by an earlier version (policies inline) is read too.
pub fn load(state_dir: &Path) -> Option<Snapshot> {
    let bytes = std::fs::read(snapshot_file(state_dir)).ok()?;
    if let Ok(saved) = serde_json::from_slice::<Saved>(&bytes) {
        let chunks = chunk_dir(state_dir);
        let mut policies = Vec::with_capacity(saved.policies.len());
        for p in saved.policies {
            let mut parts = Vec::with_capacity(p.chunks.len());
            for name in &p.chunks {
                let bytes = std::fs::read(chunks.join(name)).ok()?;
                parts.push(Arc::new(serde_json::from_slice::<RuleChunk>(&bytes).ok()?));
            }
            policies.push(Policy { id: p.id, fq_name: p.fq_name, rules: Rules::from_chunks(parts) });
        }
        return Some(Snapshot {
            revision: saved.revision,
            cluster: saved.cluster,
            epoch: saved.epoch,
            networks: saved.networks,
            endpoints: saved.endpoints,
            hosts: saved.hosts,
            policies,
            floating_ips: saved.floating_ips,
            services: saved.services,
            ..Default::default()
        });
    }
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::{ProjectName, Rule};

    fn rule(port: u32) -> Rule {
        Rule::parse("r", &format!("deny tcp any any > any {port}"), &ProjectName::default_project()).unwrap()
    }

    /// A snapshot with one policy of `n` rules in chunks of 100.
    fn snapshot(n: u32) -> Snapshot {
        let rules: Vec<Rule> = (0..n).map(|i| rule(1000 + i)).collect();
        let chunks = rules.chunks(100).enumerate().map(|(i, c)| Arc::new(RuleChunk::new(i as u64, c.to_vec())));
        let policy = Policy {
            id: Uuid::from_u128(7),
            fq_name: "default-domain:admin:p".parse().unwrap(),
            rules: Rules::from_chunks(chunks),
        };
        Snapshot { revision: 42, policies: vec![policy], ..Default::default() }
    }

    fn chunk_files(dir: &Path) -> usize {
        std::fs::read_dir(chunk_dir(dir)).unwrap().count()
    }

    #[test]
    fn a_saved_snapshot_loads_equal() {
        let dir = tempfile::tempdir().unwrap();
        let snap = snapshot(450);
        let stats = SnapshotFiles::new(dir.path()).save(&snap).unwrap();
        assert_eq!(stats, SaveStats { chunks_written: 5, chunks_removed: 0 });
        assert_eq!(load(dir.path()), Some(snap));
    }

    #[test]
    fn a_one_rule_change_writes_one_chunk_and_removes_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = SnapshotFiles::new(dir.path());
        let mut snap = snapshot(450);
        files.save(&snap).unwrap();
        snap.policies[0].rules.set(250, rule(9999));
        snap.revision = 43;
        assert_eq!(files.save(&snap).unwrap(), SaveStats { chunks_written: 1, chunks_removed: 1 });
        assert_eq!(chunk_files(dir.path()), 5);
        assert_eq!(load(dir.path()), Some(snap));
    }

    #[test]
    fn a_new_run_rewrites_its_chunks_and_removes_the_files_of_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let snap = snapshot(300);
        SnapshotFiles::new(dir.path()).save(&snap).unwrap();
        let stats = SnapshotFiles::new(dir.path()).save(&snap).unwrap();
        assert_eq!(stats, SaveStats { chunks_written: 3, chunks_removed: 3 });
        assert_eq!(load(dir.path()), Some(snap));
    }

    #[test]
    fn a_missing_chunk_file_means_no_saved_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        SnapshotFiles::new(dir.path()).save(&snapshot(200)).unwrap();
        let victim = std::fs::read_dir(chunk_dir(dir.path())).unwrap().next().unwrap().unwrap().path();
        std::fs::remove_file(victim).unwrap();
        assert_eq!(load(dir.path()), None);
    }

    #[test]
    fn a_snapshot_saved_whole_by_an_earlier_version_loads() {
        let dir = tempfile::tempdir().unwrap();
        let snap = snapshot(150);
        std::fs::write(snapshot_file(dir.path()), serde_json::to_vec(&snap).unwrap()).unwrap();
        assert_eq!(load(dir.path()), Some(snap));
    }
}
