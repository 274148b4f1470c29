//! Group commit on etcd: transactions that arrive while others are being
//! committed wait, and are then committed together, several in one etcd
//! transaction, when none touches what another writes. etcd spends most of
//! a small transaction's cost on the request itself (its gRPC call, its
//! raft entry, its apply), so a controller that creates many endpoints at
//! once costs the cluster a fraction of one request each.
//!
//! A group is correct because its transactions are disjoint: no
//! transaction compares or writes a key another one writes. etcd evaluates
//! every compare before any op, so each transaction sees the store as if
//! it had been committed alone, first; they all get the group's revision.
//! When a compare of the group fails, the failure branch reads every
//! compared key (as for one transaction, see `etcd_txn`): the transactions
//! whose compares failed get their answer, and the others are committed
//! again as a new group.
//!
//! A group keeps within etcd's default limits (128 compares, 128 ops, well
//! under 1.5 MiB); a transaction beyond them, one with failure ops, and one
//! that fails whatever etcd holds, are committed alone.

use tokio::sync::oneshot;

use crate::etcd_txn::Plan;
use crate::{Compare, Op, StoreError, Txn, TxnResult};

/// The most compares, ops or failure reads of one group (etcd's default
/// `--max-txn-ops`).
pub(crate) const GROUP_OPS: usize = 128;
/// The most bytes of keys and values of one group.
const GROUP_BYTES: usize = 1 << 20;

/// A key, or every key under a prefix.
#[derive(Debug, Clone, PartialEq)]
enum Span {
    Key(String),
    Prefix(String),
}

impl Span {
    fn overlaps(&self, other: &Span) -> bool {
        match (self, other) {
            (Span::Key(a), Span::Key(b)) => a == b,
            (Span::Prefix(p), Span::Key(k)) | (Span::Key(k), Span::Prefix(p)) => k.starts_with(p.as_str()),
            (Span::Prefix(a), Span::Prefix(b)) => a.starts_with(b.as_str()) || b.starts_with(a.as_str()),
        }
    }
}

/// What a transaction reads (its compares) and writes (its ops).
#[derive(Debug, Default)]
pub(crate) struct Footprint {
    reads: Vec<Span>,
    writes: Vec<Span>,
    bytes: usize,
}

impl Footprint {
    fn of(txn: &Txn) -> Footprint {
        let mut f = Footprint::default();
        for c in &txn.compares {
            let span = match c {
                Compare::PrefixEmpty(p) => Span::Prefix(p.clone()),
                Compare::Absent(k)
                | Compare::Exists(k)
                | Compare::ModRevision(k, _)
                | Compare::Version(k, _)
                | Compare::ValueEquals(k, _) => Span::Key(k.clone()),
            };
            f.bytes += match c {
                Compare::ValueEquals(k, v) => k.len() + v.len(),
                _ => span_len(&span),
            };
            f.reads.push(span);
        }
        for op in &txn.success {
            let span = match op {
                Op::Put { key, value } => {
                    f.bytes += value.len();
                    Span::Key(key.clone())
                }
                Op::Delete { key } => Span::Key(key.clone()),
                Op::DeletePrefix { prefix } => Span::Prefix(prefix.clone()),
            };
            f.bytes += span_len(&span);
            f.writes.push(span);
        }
        f
    }

    /// Whether `self` and `other` can be in one group: neither writes what
    /// the other reads or writes.
    fn disjoint(&self, other: &Footprint) -> bool {
        let clash = |writes: &[Span], touched: &[&[Span]]| {
            writes.iter().any(|w| touched.iter().any(|spans| spans.iter().any(|s| w.overlaps(s))))
        };
        !clash(&self.writes, &[&other.reads, &other.writes]) && !clash(&other.writes, &[&self.reads])
    }
}

fn span_len(span: &Span) -> usize {
    match span {
        Span::Key(k) | Span::Prefix(k) => k.len(),
    }
}

/// A transaction waiting to be committed with others.
pub(crate) struct Waiting {
    pub(crate) txn: Txn,
    pub(crate) plan: Plan,
    pub(crate) footprint: Footprint,
    pub(crate) reply: oneshot::Sender<Result<TxnResult, StoreError>>,
}

/// What `txn` touches, if it may be committed in a group; `None` when it
/// must be committed alone (see the module docs).
pub(crate) fn groupable(txn: &Txn, plan: &Plan) -> Option<Footprint> {
    let footprint = Footprint::of(txn);
    let fits = plan.compares.len() <= GROUP_OPS
        && plan.success.len() <= GROUP_OPS
        && plan.failure.len() <= GROUP_OPS
        && footprint.bytes <= GROUP_BYTES;
    (txn.failure.is_empty() && !plan.fails_anyway() && fits).then_some(footprint)
}

/// Splits `waiting` into groups, in order of arrival: each transaction
/// joins the first group it is disjoint from and fits in.
pub(crate) fn partition(waiting: Vec<Waiting>) -> Vec<Vec<Waiting>> {
    let mut groups: Vec<Vec<Waiting>> = Vec::new();
    for w in waiting {
        let slot = groups.iter().position(|g| fits(g, &w));
        match slot {
            Some(i) => groups[i].push(w),
            None => groups.push(vec![w]),
        }
    }
    groups
}

fn fits(group: &[Waiting], w: &Waiting) -> bool {
    let sum = |f: fn(&Waiting) -> usize| group.iter().map(f).sum::<usize>() + f(w);
    sum(|x| x.plan.compares.len()) <= GROUP_OPS
        && sum(|x| x.plan.success.len()) <= GROUP_OPS
        && sum(|x| x.plan.failure.len()) <= GROUP_OPS
        && sum(|x| x.footprint.bytes) <= GROUP_BYTES
        && group.iter().all(|x| x.footprint.disjoint(&w.footprint))
}

/// The one etcd transaction of `group`: every compare, every op, and the
/// reads of every failure branch, in the group's order.
pub(crate) fn joined(group: &[Waiting]) -> etcd_client::Txn {
    let compares = group.iter().flat_map(|w| w.plan.compares.iter().cloned()).collect::<Vec<_>>();
    let success = group.iter().flat_map(|w| w.plan.success.iter().cloned()).collect::<Vec<_>>();
    let failure = group.iter().flat_map(|w| w.plan.failure.iter().cloned()).collect::<Vec<_>>();
    etcd_client::Txn::new().when(compares).and_then(success).or_else(failure)
}

/// The same error for each of a group's transactions (the group failed as
/// one request: whether it was applied is unknown, as for one).
pub(crate) fn shared(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable { endpoints, reason } => {
            StoreError::Unavailable { endpoints: endpoints.clone(), reason: reason.clone() }
        }
        StoreError::Corrupt { key, reason } => StoreError::Corrupt { key: key.clone(), reason: reason.clone() },
        other => StoreError::backend("commit a transaction", other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footprint(txn: Txn) -> Footprint {
        Footprint::of(&txn)
    }

    #[test]
    fn transactions_that_only_read_the_same_key_are_disjoint_but_not_one_that_writes_it() {
        let create = |name: &str| {
            footprint(
                Txn::new()
                    .when(Compare::exists("/net/1"))
                    .when(Compare::absent(format!("/name/{name}")))
                    .then(Op::put(format!("/name/{name}"), "x")),
            )
        };
        assert!(create("a").disjoint(&create("b")), "both read the network, each writes its own name");
        assert!(!create("a").disjoint(&create("a")), "both write one name");
        let delete_net = footprint(Txn::new().then(Op::delete("/net/1")));
        assert!(!create("a").disjoint(&delete_net) && !delete_net.disjoint(&create("a")), "one writes what the other reads");
        let wipe = footprint(Txn::new().then(Op::delete_prefix("/name/")));
        assert!(!wipe.disjoint(&create("a")), "a prefix covers the key");
        let empty_check = footprint(Txn::new().when(Compare::prefix_empty("/name/")));
        assert!(!empty_check.disjoint(&create("z")), "a prefix compare reads every key under it");
    }
}
