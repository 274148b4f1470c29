//! What only the durable backend promises: the file keeps everything across
//! reopen and `kill -9`, and only one process may have it open.
//!
//! The multi-process tests re-execute this test binary: the `child_*` tests
//! do nothing unless their environment variable is set, in which case they
//! play the child process (a writer killed mid-burst, or a holder of the
//! file).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tessera_store::{EventKind, Op, RedbStore, Store, StoreError, StoreOptions, Txn};

const CRASH_CHILD: &str = "TESSERA_STORE_TEST_CRASH_CHILD";
const CRASH_ROUND: &str = "TESSERA_STORE_TEST_CRASH_ROUND";
const HOLD_CHILD: &str = "TESSERA_STORE_TEST_HOLD_CHILD";
const PATIENCE: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("tokio runtime")
}

/// Runs the test `name` of this binary as a child process with `env`, its
/// stdout piped.
fn spawn_child(name: &str, env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("test binary path"));
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("spawn child test process")
}

/// The child's stdout lines, read on a thread so the parent can time out.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn reopening_keeps_keys_revision_events_and_compaction_point() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    runtime().block_on(async {
        {
            let store = RedbStore::open_with(&path, StoreOptions { retain_events: 3 }).unwrap();
            for i in 0..5 {
                store.txn(Txn::new().then(Op::put(format!("k{i}"), vec![i]))).await.unwrap();
            }
            store.txn(Txn::new().then(Op::delete("k0"))).await.unwrap();
        }
        let store = RedbStore::open_with(&path, StoreOptions { retain_events: 3 }).unwrap();
        assert_eq!(store.revision().await.unwrap(), 6);
        let listing = store.range("").await.unwrap();
        assert_eq!(listing.revision, 6);
        let keys: Vec<_> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["k1", "k2", "k3", "k4"]);
        assert_eq!(listing.kvs[3].value, [4]);
        assert_eq!(listing.kvs[3].mod_revision, 5);
        let events = store.events_since("", 3, usize::MAX).await.unwrap();
        let summary: Vec<_> = events.iter().map(|e| (e.revision, e.kind, e.kv.key.as_str())).collect();
        assert_eq!(summary, [(4, EventKind::Put, "k3"), (5, EventKind::Put, "k4"), (6, EventKind::Delete, "k0")]);
        assert!(matches!(store.events_since("", 2, usize::MAX).await, Err(StoreError::Compacted { requested: 2, compacted: 3 })));
        // The revision counter continues where it stopped.
        let next = store.txn(Txn::new().then(Op::put("k5", "v"))).await.unwrap();
        assert_eq!(next.revision, 7);
        assert_eq!(*store.subscribe().borrow(), 7);
    });
}

#[test]
fn a_reopened_store_publishes_its_revision_to_new_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    runtime().block_on(async {
        {
            let store = RedbStore::open(&path).unwrap();
            store.txn(Txn::new().then(Op::put("a", "1"))).await.unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(*store.subscribe().borrow(), 1);
    });
}

#[test]
fn a_second_open_in_the_same_process_fails_with_already_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let first = RedbStore::open(&path).unwrap();
    let err = RedbStore::open(&path).unwrap_err();
    assert!(matches!(&err, StoreError::AlreadyOpen { path: p } if p == &path), "{err}");
    drop(first);
    RedbStore::open(&path).expect("open succeeds once the first handle is dropped");
}

#[test]
fn a_file_held_by_another_process_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut child = spawn_child("child_holds_the_file_open", &[(HOLD_CHILD, path.to_str().unwrap())]);
    let lines = lines_of(&mut child);
    loop {
        let line = lines.recv_timeout(PATIENCE).expect("child reports READY");
        // libtest prints "test <name> ... " on the same line first.
        if line.ends_with("READY") {
            break;
        }
    }

    let err = RedbStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(path.to_str().unwrap()), "the error names the file: {message}");
    assert!(message.contains("already open"), "{message}");

    child.kill().unwrap();
    child.wait().unwrap();
    RedbStore::open(&path).expect("open succeeds once the holder is gone");
}

/// Child side of [`a_file_held_by_another_process_cannot_be_opened`].
#[test]
fn child_holds_the_file_open() {
    let Some(path) = std::env::var_os(HOLD_CHILD) else {
        return;
    };
    let _store = RedbStore::open(Path::new(&path)).expect("child opens the store");
    println!("READY");
    // Hold the file until the parent kills us (or closes our stdin).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    const ROUNDS: u32 = 3;
    const ACKS_BEFORE_KILL: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut acknowledged: Vec<(String, u64)> = Vec::new();

    for round in 0..ROUNDS {
        let round = round.to_string();
        let mut child = spawn_child("child_writes_until_killed", &[(CRASH_CHILD, path.to_str().unwrap()), (CRASH_ROUND, &round)]);
        let lines = lines_of(&mut child);
        let mut parse = |line: String| {
            // The first line follows libtest's "test <name> ... ".
            if let Some((_, ack)) = line.split_once("ACK ") {
                let (key, revision) = ack.split_once(' ').expect("ACK <key> <revision>");
                acknowledged.push((key.to_owned(), revision.parse().expect("revision")));
                true
            } else {
                false
            }
        };
        let mut acks = 0;
        while acks < ACKS_BEFORE_KILL {
            let line = lines.recv_timeout(PATIENCE).expect("child keeps acknowledging writes");
            acks += usize::from(parse(line));
        }
        child.kill().expect("SIGKILL the writer mid-burst");
        child.wait().unwrap();
        // Lines already in the pipe were acknowledged before the kill.
        while let Ok(line) = lines.recv_timeout(PATIENCE) {
            parse(line);
        }

        let store = RedbStore::open(&path).expect("a killed writer's file reopens");
        runtime().block_on(async {
            for (key, revision) in &acknowledged {
                let kv = store.get(key).await.unwrap().unwrap_or_else(|| panic!("acknowledged {key} is lost"));
                assert_eq!(kv.mod_revision, *revision, "{key}");
                assert_eq!(kv.value, key.as_bytes());
            }
            let last = acknowledged.iter().map(|(_, r)| *r).max().unwrap();
            assert!(store.revision().await.unwrap() >= last);
            let events = store.events_since("", 0, usize::MAX).await.unwrap();
            assert!(events.windows(2).all(|w| w[0].revision < w[1].revision));
            assert!(events.len() as u64 >= last, "the event log is as durable as the keys");
        });
    }
}

/// Child side of [`acknowledged_writes_survive_sigkill`]: writes from 4
/// concurrent tasks forever, printing each acknowledged key and revision.
#[test]
fn child_writes_until_killed() {
    let Some(path) = std::env::var_os(CRASH_CHILD) else {
        return;
    };
    let round = std::env::var(CRASH_ROUND).unwrap_or_default();
    runtime().block_on(async move {
        let store = RedbStore::open(Path::new(&path)).expect("child opens the store");
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let store = store.clone();
                let round = round.clone();
                tokio::spawn(async move {
                    for i in 0u64.. {
                        let key = format!("crash/{round}/{w}/{i:08}");
                        let result = store.txn(Txn::new().then(Op::put(key.clone(), key.clone()))).await.unwrap();
                        println!("ACK {key} {}", result.revision);
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
    });
}

#[test]
fn a_file_that_is_not_a_store_is_rejected_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let err = RedbStore::open(&path).unwrap_err();
    assert!(matches!(&err, StoreError::Open { path: p, .. } if p == &path), "{err}");
    assert!(std::error::Error::source(&err).is_some(), "the cause is kept");
}

#[test]
fn a_store_in_a_missing_directory_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/store.redb");
    let err = RedbStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert!(err.to_string().contains("no/such/dir"), "{err}");
}
