//! A policy's ordered rules, held in shared chunks.
//!
//! A policy may hold tens of thousands of rules. [`Rules`] keeps them in
//! chunks of at most [`RULE_CHUNK`] rules behind `Arc`s: copying a policy
//! copies pointers, changing one rule copies one chunk, and each chunk
//! remembers the hash of its rules, so a policy's [`Rules::fingerprint`] is
//! a hash of chunk hashes. The controller stores each chunk under its own key
//! (a one-rule change writes and sends one chunk), and agents rebuild a
//! policy from the chunks they are sent.
//!
//! On the API a policy's rules are a plain JSON list; the chunks are an
//! internal layout.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::Rule;

/// The most rules a chunk holds.
pub const RULE_CHUNK: usize = 256;

/// A run of consecutive rules of a policy, identified within the policy.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleChunk {
    /// Unique within the policy; says nothing of the chunk's position.
    pub id: u64,
    pub rules: Vec<Rule>,
    #[serde(skip)]
    #[schema(ignore)]
    hash: OnceLock<u64>,
}

impl RuleChunk {
    pub fn new(id: u64, rules: Vec<Rule>) -> Self {
        RuleChunk { id, rules, hash: OnceLock::new() }
    }

    /// A hash of the chunk's rules (computed once).
    pub fn hash(&self) -> u64 {
        *self.hash.get_or_init(|| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.rules.hash(&mut h);
            h.finish()
        })
    }
}

impl Clone for RuleChunk {
    fn clone(&self) -> Self {
        RuleChunk { id: self.id, rules: self.rules.clone(), hash: self.hash.clone() }
    }
}

impl PartialEq for RuleChunk {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.rules == other.rules
    }
}

impl Eq for RuleChunk {}

impl std::fmt::Debug for RuleChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleChunk").field("id", &self.id).field("rules", &self.rules).finish()
    }
}

/// A policy's ordered rules (see the module docs). Equality and `Hash` are
/// those of the rule sequence, whatever the chunking.
#[derive(Clone, Default)]
pub struct Rules {
    chunks: Vec<Arc<RuleChunk>>,
    len: usize,
}

impl Rules {
    pub fn new() -> Self {
        Self::default()
    }

    /// The rules in chunks of [`RULE_CHUNK`], numbered from 0.
    pub fn from_vec(rules: Vec<Rule>) -> Self {
        let len = rules.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(RULE_CHUNK));
        let mut rest = rules.into_iter().peekable();
        let mut id = 0;
        while rest.peek().is_some() {
            chunks.push(Arc::new(RuleChunk::new(id, rest.by_ref().take(RULE_CHUNK).collect())));
            id += 1;
        }
        Rules { chunks, len }
    }

    /// Rules from chunks in order; empty chunks are dropped.
    pub fn from_chunks(chunks: impl IntoIterator<Item = Arc<RuleChunk>>) -> Self {
        let chunks: Vec<Arc<RuleChunk>> = chunks.into_iter().filter(|c| !c.rules.is_empty()).collect();
        let len = chunks.iter().map(|c| c.rules.len()).sum();
        Rules { chunks, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn chunks(&self) -> &[Arc<RuleChunk>] {
        &self.chunks
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Rule> + Clone + '_ {
        self.chunks.iter().flat_map(|c| c.rules.iter())
    }

    /// The chunk holding rule `i` and the rule's index in it.
    fn locate(&self, i: usize) -> Option<(usize, usize)> {
        let mut start = 0;
        for (c, chunk) in self.chunks.iter().enumerate() {
            if i < start + chunk.rules.len() {
                return Some((c, i - start));
            }
            start += chunk.rules.len();
        }
        None
    }

    pub fn get(&self, i: usize) -> Option<&Rule> {
        let (c, j) = self.locate(i)?;
        Some(&self.chunks[c].rules[j])
    }

    pub fn to_vec(&self) -> Vec<Rule> {
        self.iter().cloned().collect()
    }

    /// A hash of the rules from the chunks' cached hashes: equal
    /// fingerprints mean equal rules (as far as a 64-bit hash tells); equal
    /// rules chunked differently may have different fingerprints.
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for c in &self.chunks {
            h.write_u64(c.hash());
        }
        h.write_usize(self.len);
        h.finish()
    }

    fn next_id(&self) -> u64 {
        self.chunks.iter().map(|c| c.id + 1).max().unwrap_or(0)
    }

    /// Replaces rule `i`; returns the id of the chunk that changed, or
    /// `None` when there is no rule `i`.
    pub fn set(&mut self, i: usize, rule: Rule) -> Option<u64> {
        let (c, j) = self.locate(i)?;
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        chunk.rules[j] = rule;
        chunk.hash = OnceLock::new();
        Some(chunk.id)
    }

    /// Inserts `rule` before rule `i` (`i == len` appends); returns the ids
    /// of the chunks that changed or were made (a full chunk is split in
    /// two), or `None` when `i > len`.
    pub fn insert(&mut self, i: usize, rule: Rule) -> Option<Vec<u64>> {
        if i > self.len {
            return None;
        }
        let next = self.next_id();
        let (c, j) = match self.locate(i) {
            Some(at) => at,
            None if self.chunks.is_empty() => {
                self.chunks.push(Arc::new(RuleChunk::new(next, vec![rule])));
                self.len += 1;
                return Some(vec![next]);
            }
            // Appending: to the last chunk.
            None => (self.chunks.len() - 1, self.chunks[self.chunks.len() - 1].rules.len()),
        };
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        chunk.rules.insert(j, rule);
        chunk.hash = OnceLock::new();
        self.len += 1;
        let mut changed = vec![chunk.id];
        if chunk.rules.len() > RULE_CHUNK {
            let tail = chunk.rules.split_off(chunk.rules.len() / 2);
            self.chunks.insert(c + 1, Arc::new(RuleChunk::new(next, tail)));
            changed.push(next);
        }
        Some(changed)
    }

    /// Appends `rule`.
    pub fn push(&mut self, rule: Rule) {
        self.insert(self.len, rule);
    }

    /// Removes rule `i`; returns it and the id of its chunk (gone when it
    /// held only that rule), or `None` when there is no rule `i`.
    pub fn remove(&mut self, i: usize) -> Option<(Rule, u64)> {
        let (c, j) = self.locate(i)?;
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        let rule = chunk.rules.remove(j);
        chunk.hash = OnceLock::new();
        let id = chunk.id;
        if chunk.rules.is_empty() {
            self.chunks.remove(c);
        }
        self.len -= 1;
        Some((rule, id))
    }
}

impl std::ops::Index<usize> for Rules {
    type Output = Rule;
    fn index(&self, i: usize) -> &Rule {
        self.get(i).unwrap_or_else(|| panic!("rule {i} of {}", self.len))
    }
}

impl<'a> IntoIterator for &'a Rules {
    type Item = &'a Rule;
    type IntoIter = Box<dyn Iterator<Item = &'a Rule> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl FromIterator<Rule> for Rules {
    fn from_iter<I: IntoIterator<Item = Rule>>(iter: I) -> Self {
        Rules::from_vec(iter.into_iter().collect())
    }
}

impl From<Vec<Rule>> for Rules {
    fn from(v: Vec<Rule>) -> Self {
        Rules::from_vec(v)
    }
}

impl PartialEq for Rules {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Rules {}

impl Hash for Rules {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.len);
        for r in self.iter() {
            r.hash(state);
        }
    }
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Rules {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Rules {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<Rule>::deserialize(d).map(Rules::from_vec)
    }
}

impl utoipa::PartialSchema for Rules {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <Vec<Rule> as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for Rules {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProjectName;

    fn rule(port: u16) -> Rule {
        Rule::parse("r", &format!("deny tcp any any > any {port}"), &ProjectName::default_project()).unwrap()
    }

    fn ports(r: &Rules) -> Vec<u16> {
        r.iter().map(|r| r.dst_ports[0].start).collect()
    }

    #[test]
    fn chunks_hold_at_most_rule_chunk_rules_and_keep_the_order() {
        let n = RULE_CHUNK * 2 + 3;
        let r = Rules::from_vec((0..n as u16).map(rule).collect());
        assert_eq!(r.len(), n);
        assert_eq!(r.chunks().len(), 3);
        assert_eq!(ports(&r), (0..n as u16).collect::<Vec<_>>());
        assert_eq!(r[RULE_CHUNK + 1], rule(RULE_CHUNK as u16 + 1));
        assert!(r.get(n).is_none());
    }

    #[test]
    fn edits_change_one_chunk_and_the_fingerprint() {
        let n = RULE_CHUNK * 3;
        let mut r = Rules::from_vec((0..n as u16).map(rule).collect());
        let before = r.clone();
        let fp = r.fingerprint();
        assert_eq!(r.set(RULE_CHUNK + 5, rule(9999)), Some(1));
        assert_ne!(r.fingerprint(), fp);
        // Unchanged chunks are shared with the copy.
        assert!(Arc::ptr_eq(&r.chunks()[0], &before.chunks()[0]));
        assert!(!Arc::ptr_eq(&r.chunks()[1], &before.chunks()[1]));
        assert_eq!(before[RULE_CHUNK + 5], rule(RULE_CHUNK as u16 + 5));
        r.set(RULE_CHUNK + 5, rule(RULE_CHUNK as u16 + 5));
        assert_eq!(r, before);
        assert_eq!(r.fingerprint(), fp);
    }

    #[test]
    fn insert_splits_a_full_chunk_and_remove_drops_an_empty_one() {
        let mut r = Rules::from_vec((0..RULE_CHUNK as u16).map(rule).collect());
        let mut want = ports(&r);
        assert_eq!(r.insert(10, rule(60000)), Some(vec![0, 1]));
        want.insert(10, 60000);
        assert_eq!(ports(&r), want);
        assert_eq!(r.chunks().len(), 2);
        assert_eq!(r.insert(r.len(), rule(60001)), Some(vec![1]));
        want.push(60001);
        assert_eq!(ports(&r), want);
        assert!(r.insert(r.len() + 1, rule(1)).is_none());
        let (gone, chunk) = r.remove(0).unwrap();
        assert_eq!((gone, chunk), (rule(0), 0));
        want.remove(0);
        assert_eq!(ports(&r), want);
        let mut one = Rules::new();
        assert_eq!(one.insert(0, rule(5)), Some(vec![0]));
        one.remove(0);
        assert!(one.is_empty() && one.chunks().is_empty());
        assert!(one.remove(0).is_none());
    }

    #[test]
    fn serde_is_a_plain_list_and_equality_ignores_chunking() {
        let r = Rules::from_vec((0..300).map(rule).collect());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 300);
        let back: Rules = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        let mut other = Rules::from_chunks([
            r.chunks()[0].clone(),
            Arc::new(RuleChunk::new(7, r.iter().skip(RULE_CHUNK).cloned().collect())),
        ]);
        assert_eq!(other, r);
        other.set(299, rule(1));
        assert_ne!(other, r);
    }
}
