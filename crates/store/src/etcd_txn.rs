//! A Tessera [`Txn`] as one etcd transaction, and etcd's answer as a
//! [`TxnResult`].
//!
//! Compares map one to one ([`Compare::Absent`]: `version == 0`,
//! [`Compare::Exists`]: `version > 0`, [`Compare::ModRevision`] and
//! [`Compare::Version`] with the revision mapped, [`Compare::PrefixEmpty`]:
//! `version == 0` over the prefix's range, [`Compare::ValueEquals`]: `value
//! ==`, which etcd never holds for a missing key). etcd does not say which
//! compare failed, so the failure branch first reads every compared key (in
//! the same transaction, so at the same revision, before its own ops) and
//! [`failed_compares`] evaluates each compare against what it read.
//!
//! etcd refuses an empty key in a compare; Tessera's empty key never exists,
//! so such a compare is decided here ([`constant`]) and, when it does not
//! hold, an always-false compare sends etcd down the failure branch.

use etcd_client::{Compare as EtcdCompare, CompareOp, DeleteOptions, GetOptions, TxnOp, TxnOpResponse};

use crate::etcd_conv::{key_value, prefix_range, to_etcd};
use crate::{Compare, KeyValue, Op, StoreError, Txn};

/// An etcd transaction built from a Tessera one, in parts (so that several
/// can be joined into one, see `etcd_group`), and what is needed to read
/// its answer.
pub(crate) struct Plan {
    pub(crate) compares: Vec<EtcdCompare>,
    pub(crate) success: Vec<TxnOp>,
    /// The reads that open the failure branch, one per compare not decided
    /// here, then the transaction's own failure ops.
    pub(crate) failure: Vec<TxnOp>,
    /// Per compare: decided here (`Some`), or read in the failure branch.
    constants: Vec<Option<bool>>,
    /// How many reads open the failure branch.
    reads: usize,
}

/// Builds the etcd transaction for `txn` (validated by the caller).
pub(crate) fn plan(txn: &Txn) -> Plan {
    let mut compares = Vec::new();
    let mut reads = Vec::new();
    let mut constants = Vec::new();
    for compare in &txn.compares {
        match constant(compare) {
            Some(holds) => {
                constants.push(Some(holds));
                if !holds {
                    // mod_revision < 0 never holds, for any key.
                    compares.push(EtcdCompare::mod_revision(vec![0], CompareOp::Less, 0));
                }
            }
            None => {
                constants.push(None);
                let (etcd, read) = compare_and_read(compare);
                compares.push(etcd);
                reads.push(read);
            }
        }
    }
    let reads_len = reads.len();
    let success: Vec<TxnOp> = txn.success.iter().map(op).collect();
    let failure: Vec<TxnOp> = reads.into_iter().chain(txn.failure.iter().map(op)).collect();
    Plan { compares, success, failure, constants, reads: reads_len }
}

impl Plan {
    /// The one etcd transaction of this plan alone.
    pub(crate) fn txn(&self) -> etcd_client::Txn {
        etcd_client::Txn::new().when(self.compares.clone()).and_then(self.success.clone()).or_else(self.failure.clone())
    }

    /// Whether a compare decided here does not hold (the transaction fails
    /// whatever etcd holds).
    pub(crate) fn fails_anyway(&self) -> bool {
        self.constants.contains(&Some(false))
    }
}

/// A compare on the empty key, which never exists: decided without etcd.
fn constant(compare: &Compare) -> Option<bool> {
    match compare {
        Compare::Absent(k) if k.is_empty() => Some(true),
        Compare::Exists(k) if k.is_empty() => Some(false),
        Compare::ModRevision(k, r) | Compare::Version(k, r) if k.is_empty() => Some(*r == 0),
        Compare::ValueEquals(k, _) if k.is_empty() => Some(false),
        _ => None,
    }
}

/// The etcd compare for `compare`, and the read that tells whether it held.
fn compare_and_read(compare: &Compare) -> (EtcdCompare, TxnOp) {
    let get = |key: &str| TxnOp::get(key.as_bytes().to_vec(), None);
    match compare {
        Compare::Absent(key) => (EtcdCompare::version(key.as_bytes().to_vec(), CompareOp::Equal, 0), get(key)),
        Compare::Exists(key) => (EtcdCompare::version(key.as_bytes().to_vec(), CompareOp::Greater, 0), get(key)),
        Compare::ModRevision(key, revision) => {
            let etcd = if *revision == 0 { 0 } else { to_etcd(*revision) };
            (EtcdCompare::mod_revision(key.as_bytes().to_vec(), CompareOp::Equal, etcd), get(key))
        }
        Compare::Version(key, version) => {
            let version = i64::try_from(*version).unwrap_or(i64::MAX);
            (EtcdCompare::version(key.as_bytes().to_vec(), CompareOp::Equal, version), get(key))
        }
        Compare::PrefixEmpty(prefix) => {
            let (start, end) = prefix_range(prefix);
            let read = TxnOp::get(start.clone(), Some(GetOptions::new().with_range(end.clone()).with_count_only()));
            (EtcdCompare::version(start, CompareOp::Equal, 0).with_range(end), read)
        }
        Compare::ValueEquals(key, value) => {
            (EtcdCompare::value(key.as_bytes().to_vec(), CompareOp::Equal, value.clone()), get(key))
        }
    }
}

fn op(op: &Op) -> TxnOp {
    match op {
        Op::Put { key, value } => TxnOp::put(key.as_bytes().to_vec(), value.clone(), None),
        Op::Delete { key } => TxnOp::delete(key.as_bytes().to_vec(), None),
        Op::DeletePrefix { prefix } => {
            let (start, end) = prefix_range(prefix);
            TxnOp::delete(start, Some(DeleteOptions::new().with_range(end)))
        }
    }
}

/// The indices of the compares of `txn` that did not hold, from the reads
/// that open the failure branch of its plan (`responses`: etcd's op
/// responses of that branch, in order).
pub(crate) fn failed_compares(txn: &Txn, plan: &Plan, responses: &[TxnOpResponse]) -> Result<Vec<usize>, StoreError> {
    let mut reads = responses.iter().take(plan.reads);
    let mut failed = Vec::new();
    for (index, (compare, constant)) in txn.compares.iter().zip(&plan.constants).enumerate() {
        let holds = match constant {
            Some(holds) => *holds,
            None => {
                let Some(TxnOpResponse::Get(read)) = reads.next() else {
                    return Err(StoreError::backend("read the compared keys", "etcd answered without the reads it was asked"));
                };
                let current = match read.kvs().first() {
                    Some(kv) => Some(key_value(kv)?),
                    None => None,
                };
                holds(compare, current.as_ref(), read.count())
            }
        };
        if !holds {
            failed.push(index);
        }
    }
    Ok(failed)
}

/// Whether `compare` holds for the key's `current` record (for
/// [`Compare::PrefixEmpty`]: `count` keys under the prefix).
fn holds(compare: &Compare, current: Option<&KeyValue>, count: i64) -> bool {
    match compare {
        Compare::Absent(_) => current.is_none(),
        Compare::Exists(_) => current.is_some(),
        Compare::ModRevision(_, revision) => current.map_or(0, |kv| kv.mod_revision) == *revision,
        Compare::Version(_, version) => current.map_or(0, |kv| kv.version) == *version,
        Compare::PrefixEmpty(_) => count == 0,
        Compare::ValueEquals(_, value) => current.is_some_and(|kv| kv.value == *value),
    }
}

/// The number of events the applied branch made: one per put, one per
/// deleted key.
pub(crate) fn events_of(responses: &[TxnOpResponse], skip_reads: usize) -> u64 {
    responses
        .iter()
        .skip(skip_reads)
        .map(|r| match r {
            TxnOpResponse::Put(_) => 1,
            TxnOpResponse::Delete(d) => u64::try_from(d.deleted()).unwrap_or(0),
            TxnOpResponse::Get(_) | TxnOpResponse::Txn(_) => 0,
        })
        .sum()
}

impl Plan {
    /// How many reads open the failure branch (skipped when counting its
    /// changes).
    pub(crate) fn reads(&self) -> usize {
        self.reads
    }
}
