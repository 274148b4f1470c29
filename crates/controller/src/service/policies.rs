//! Policies: ordered rules, unique by name in their project, stored as a
//! header and chunks of up to [`RULE_CHUNK`] rules so that a rule-level edit
//! writes one chunk. Reads parse only the chunks that changed since the last
//! read; agents' hit counters are summed per policy. A policy can be deleted
//! only once no network attaches it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tessera_model::watch::{ChunkRef, PolicyHeader, PolicyRules};
use tessera_model::{
    FieldError, FqName, Policy, PolicyCounters, PolicyCreate, PolicyUpdate, PolicyView, ProjectName, Rule, RuleChange, RuleChunk,
    RuleInsert, RuleSpec, Rules, RULE_CHUNK,
};
use tessera_store::{Compare, Op};
use uuid::Uuid;

use super::controller::{Controller, Created};
use super::projects::project_of;
use super::txn::{decode, del, put, put_str, uuid_of, Guard, GuardedTxn, MAX_ATTEMPTS};
use crate::error::{Error, Result};
use crate::keys;

// ---------------------------------------------------------------- validation

/// A [`PolicyCreate`] checked on its own (the networks its rules name are
/// looked up afterwards).
struct CheckedCreate {
    /// The project a bare name resolves in.
    default_project: ProjectName,
    fq_name: FqName,
    rules: Vec<Rule>,
}

fn validate_create(req: &PolicyCreate) -> Result<CheckedCreate> {
    let default_project = project_of("project", &req.project)?;
    let fq_name = FqName::resolve(&req.name, &default_project).map_err(|r| FieldError::new("name", r))?;
    let rules = req.validate_rules(fq_name.project())?;
    Ok(CheckedCreate { default_project, fq_name, rules })
}

/// The new rules of an update, checked in the policy's `project`.
fn validate_update(req: &PolicyUpdate, project: &ProjectName) -> Result<Vec<Rule>> {
    Ok(req.validate_rules(project)?)
}

/// The rule of a set or an insert, checked in the policy's `project`; an
/// error names the field `rule`.
fn validate_rule(spec: &RuleSpec, project: &ProjectName) -> Result<Rule> {
    Ok(tessera_model::policy::validate_rules(std::slice::from_ref(spec), project)
        .map_err(|e| FieldError::new(e.field.replacen("rules[0]", "rule", 1), e.reason))?
        .remove(0))
}

/// Where `edit` applies in policy `fq_name` of `total` rules: the rule's
/// index, and whether it appends. An insert past the end is invalid (field
/// `at`); a set or delete of a missing rule is `not_found` (field `index`).
fn edit_position(edit: &RuleEdit, total: usize, fq_name: &FqName) -> Result<(usize, bool)> {
    let (index, append) = match edit {
        RuleEdit::Set(i, _) | RuleEdit::Delete(i) => (*i, false),
        RuleEdit::Insert(at, _) => match at {
            Some(i) if *i <= total => (*i, *i == total),
            Some(i) => return Err(FieldError::new("at", format!("{i} is past the end: the policy has {total} rules")).into()),
            None => (total, true),
        },
    };
    if !append && index >= total {
        return Err(Error::NotFound {
            kind: "rule",
            name: format!("{index} of policy {fq_name} ({total} rules)"),
            field: Some("index".into()),
        });
    }
    Ok((index, append))
}

// ---------------------------------------------------------------- operations

impl Controller {
    /// The id of the policy `reference` names (an id, or a name resolved in
    /// `project`).
    async fn policy_id(&self, reference: &str, project: &ProjectName) -> Result<Uuid> {
        match reference.parse::<Uuid>() {
            Ok(id) => Ok(id),
            Err(_) => {
                let fq = FqName::resolve(reference, project).map_err(|r| FieldError::new("policy", r))?;
                let kv = self.store.get(&keys::policy_name(&fq)).await?.ok_or_else(|| Error::not_found("policy", reference))?;
                uuid_of(&kv)
            }
        }
    }

    async fn policy_header(&self, reference: &str) -> Result<(PolicyHeader, u64)> {
        let id = self.policy_id(reference, &ProjectName::default_project()).await?;
        self.get_json(&keys::policy(id)).await?.ok_or_else(|| Error::not_found("policy", reference))
    }

    /// The chunk of rules stored at `key` (listed without its value, at
    /// `mod_revision`): from the cache when it holds that revision, else
    /// read and parsed (once per revision). `None` when the key is gone.
    async fn chunk_at(&self, key: &str, mod_revision: u64) -> Result<Option<Arc<RuleChunk>>> {
        if let Some((rev, c)) = self.chunks.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            if *rev == mod_revision {
                return Ok(Some(c.clone()));
            }
        }
        let Some(kv) = self.store.get(key).await? else { return Ok(None) };
        let stored: PolicyRules = decode(&kv)?;
        let chunk = Arc::new(RuleChunk::new(stored.id, stored.rules));
        self.chunks.lock().unwrap_or_else(|p| p.into_inner()).insert(kv.key, (kv.mod_revision, chunk.clone()));
        Ok(Some(chunk))
    }

    /// A policy whole: its header (and the header's revision) and its
    /// chunks. The header and the chunks are separate reads; a change
    /// between them (a chunk missing, or of another length than the header
    /// says) is read again.
    async fn read_policy(&self, id: Uuid) -> Result<Option<(Policy, u64)>> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((header, rev)) = self.get_json::<PolicyHeader>(&keys::policy(id)).await? else { return Ok(None) };
            let prefix = keys::policy_rules_of(id);
            // Keys and revisions only: the values of chunks already parsed
            // are not read again (a 50,000-rule policy is ~9 MB of them).
            let kvs = self.store.range_keys(&prefix).await?.kvs;
            let mut by_id = HashMap::new();
            for kv in &kvs {
                if let Some(c) = self.chunk_at(&kv.key, kv.mod_revision).await? {
                    by_id.insert(c.id, c);
                }
            }
            self.chunks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|k, _| !k.starts_with(&prefix) || kvs.iter().any(|kv| &kv.key == k));
            let chunks: Option<Vec<Arc<RuleChunk>>> =
                header.chunks.iter().map(|r| by_id.get(&r.id).filter(|c| c.rules.len() == r.len).cloned()).collect();
            if let Some(chunks) = chunks {
                return Ok(Some((Policy { id, fq_name: header.fq_name, rules: Rules::from_chunks(chunks) }, rev)));
            }
        }
        Err(Error::Conflict(format!("policy {id} changed while it was read")))
    }

    /// The policy `reference` names (an id, or a name resolved in
    /// `project`), with its header's revision.
    pub(super) async fn find_policy_in(&self, reference: &str, project: &ProjectName) -> Result<(Policy, u64)> {
        let id = self.policy_id(reference, project).await?;
        self.read_policy(id).await?.ok_or_else(|| Error::not_found("policy", reference))
    }

    pub async fn get_policy(&self, reference: &str) -> Result<Policy> {
        Ok(self.find_policy_in(reference, &ProjectName::default_project()).await?.0)
    }

    /// A policy with the warnings about its rules and their hit counters.
    pub async fn show_policy(&self, reference: &str) -> Result<PolicyView> {
        let policy = self.get_policy(reference).await?;
        let counters = self.counters_of(&policy);
        Ok(PolicyView { counters: Some(counters), ..PolicyView::of(policy) })
    }

    /// The hit counters of a policy's rules, summed over hosts and per host.
    pub async fn policy_counters(&self, reference: &str) -> Result<PolicyCounters> {
        Ok(self.counters_of(&self.get_policy(reference).await?))
    }

    fn counters_of(&self, policy: &Policy) -> PolicyCounters {
        let reports = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        PolicyCounters::sum(policy.id, policy.rules.len(), reports.iter().map(|(h, r)| (h.as_str(), r)))
    }

    pub async fn list_policies(&self) -> Result<Vec<Policy>> {
        let headers: Vec<PolicyHeader> = self.list_json(keys::POLICIES).await?;
        let mut out = Vec::with_capacity(headers.len());
        for h in headers {
            // A policy deleted since the listing is left out.
            if let Some((p, _)) = self.read_policy(h.id).await? {
                out.push(p);
            }
        }
        out.sort_by(|a, b| a.fq_name.cmp(&b.fq_name));
        Ok(out)
    }

    /// Creates a policy whose rules name only existing networks. An identical
    /// policy of the same name is returned with `created: false`. Shadowed
    /// rules are stored, and warned about in the answer.
    pub async fn create_policy(&self, req: PolicyCreate) -> Result<Created<PolicyView>> {
        let CheckedCreate { default_project, fq_name, rules } = validate_create(&req)?;
        self.require_project("project", fq_name.project()).await?;
        self.check_rule_networks(fq_name.project(), &rules).await?;
        self.check_rule_services(fq_name.project(), &rules).await?;
        let policy = Policy { id: Uuid::new_v4(), fq_name: fq_name.clone(), rules: Rules::from_vec(rules) };
        let txn = GuardedTxn::new()
            .guard(Guard::NameTaken, Compare::Absent(keys::policy_name(&fq_name)))
            .then_all(policy_ops(&policy, &[]))
            .then(put_str(keys::policy_name(&fq_name), &policy.id.to_string()));
        if self.commit(txn).await?.is_committed() {
            tracing::info!(policy = %fq_name, rules = policy.rules.len(), "policy created");
            return Ok(Created { object: PolicyView::of(policy), created: true });
        }
        // Guard::NameTaken: a safe retry when the rules are the same.
        let (existing, _) = self.find_policy_in(&fq_name.to_string(), &default_project).await?;
        if existing.rules == policy.rules {
            return Ok(Created { object: PolicyView::of(existing), created: false });
        }
        Err(Error::AlreadyExists {
            what: format!("policy {fq_name} already exists with different rules"),
            field: Some("name".into()),
        })
    }

    /// Replaces a policy's rules; the rules must name only existing networks.
    /// Shadowed rules are stored, and warned about in the answer. Chunks of
    /// rules that did not change are kept (not written, not sent to agents).
    pub async fn update_policy(&self, reference: &str, req: PolicyUpdate) -> Result<PolicyView> {
        for _ in 0..MAX_ATTEMPTS {
            let (old, rev) = self.find_policy_in(reference, &ProjectName::default_project()).await?;
            let rules = validate_update(&req, old.fq_name.project())?;
            self.check_rule_networks(old.fq_name.project(), &rules).await?;
            self.check_rule_services(old.fq_name.project(), &rules).await?;
            let policy = Policy { rules: rechunk(&old.rules, rules), ..old.clone() };
            let old_refs = PolicyHeader::of(&old).chunks;
            let txn = GuardedTxn::new()
                .guard(Guard::PolicyChanged, Compare::ModRevision(keys::policy(policy.id), rev))
                .then_all(policy_ops(&policy, &old_refs));
            // Refused (Guard::PolicyChanged): read again.
            if self.commit(txn).await?.is_committed() {
                tracing::info!(policy = %policy.fq_name, rules = policy.rules.len(), "policy updated");
                return Ok(PolicyView::of(policy));
            }
        }
        Err(Error::Conflict(format!("policy {reference}")))
    }

    /// Replaces rule `index` of a policy (one chunk written). The answer
    /// carries the warnings that involve the rule.
    pub async fn set_rule(&self, reference: &str, index: usize, spec: RuleSpec) -> Result<RuleChange> {
        self.edit_rule(reference, RuleEdit::Set(index, spec)).await
    }

    /// Inserts a rule before rule `at` (at the end without `at`).
    pub async fn insert_rule(&self, reference: &str, req: RuleInsert) -> Result<RuleChange> {
        self.edit_rule(reference, RuleEdit::Insert(req.at, req.rule)).await
    }

    /// Removes rule `index` of a policy.
    pub async fn delete_rule(&self, reference: &str, index: usize) -> Result<RuleChange> {
        self.edit_rule(reference, RuleEdit::Delete(index)).await
    }

    /// One rule-level edit: reads the header and the one chunk the rule is
    /// in, writes that chunk (and the header when the chunk's length
    /// changes), each compared with the revision it was read at.
    async fn edit_rule(&self, reference: &str, edit: RuleEdit) -> Result<RuleChange> {
        let started = std::time::Instant::now();
        for _ in 0..MAX_ATTEMPTS {
            let (mut header, rev) = self.policy_header(reference).await?;
            let total: usize = header.chunks.iter().map(|c| c.len).sum();
            let new_rule = match &edit {
                RuleEdit::Set(_, spec) | RuleEdit::Insert(_, spec) => {
                    if matches!(edit, RuleEdit::Insert(..)) && total >= tessera_model::limits::MAX_RULES {
                        let max = tessera_model::limits::MAX_RULES;
                        return Err(
                            FieldError::new("rule", format!("the policy has {total} rules; at most {max} are allowed")).into()
                        );
                    }
                    let rule = validate_rule(spec, header.fq_name.project())?;
                    let project = header.fq_name.project();
                    let one = std::slice::from_ref(&rule);
                    let checked = match self.check_rule_networks(project, one).await {
                        Ok(()) => self.check_rule_services(project, one).await,
                        Err(e) => Err(e),
                    };
                    checked.map_err(|e| match e {
                        Error::NotFound { kind, name, field } => {
                            Error::NotFound { kind, name, field: field.map(|f| f.replacen("rules[0]", "rule", 1)) }
                        }
                        Error::Invalid(f) => Error::Invalid(FieldError::new(f.field.replacen("rules[0]", "rule", 1), f.reason)),
                        e => e,
                    })?;
                    Some(rule)
                }
                RuleEdit::Delete(_) => None,
            };
            let (index, append) = edit_position(&edit, total, &header.fq_name)?;
            // The chunk the rule is in (for an append: the last one).
            let mut start = 0;
            let mut at = None;
            for (c, r) in header.chunks.iter().enumerate() {
                if index < start + r.len || (append && c + 1 == header.chunks.len()) {
                    at = Some((c, index - start));
                    break;
                }
                start += r.len;
            }
            let mut txn = GuardedTxn::new().guard(Guard::PolicyChanged, Compare::ModRevision(keys::policy(header.id), rev));
            let next_id = header.chunks.iter().map(|c| c.id + 1).max().unwrap_or(0);
            match at {
                None => {
                    // An empty policy: the first chunk.
                    let rule = new_rule.clone().expect("only an insert reaches an empty policy");
                    let chunk = PolicyRules { policy: header.id, id: next_id, rules: vec![rule] };
                    txn = txn
                        .guard(Guard::ChunkTaken, Compare::Absent(keys::policy_rules(header.id, next_id)))
                        .then(put(keys::policy_rules(header.id, next_id), &chunk));
                    header.chunks.push(ChunkRef { id: next_id, len: 1 });
                    txn = txn.then(put(keys::policy(header.id), &header));
                }
                Some((c, offset)) => {
                    let cref = header.chunks[c];
                    let key = keys::policy_rules(header.id, cref.id);
                    let kv = self.store.get(&key).await?.ok_or_else(|| Error::Conflict(format!("policy {reference}")))?;
                    let mut chunk: PolicyRules = decode(&kv)?;
                    if chunk.rules.len() != cref.len {
                        continue;
                    }
                    txn = txn.guard(Guard::ChunkChanged, Compare::ModRevision(key.clone(), kv.mod_revision));
                    match &edit {
                        RuleEdit::Set(..) => {
                            chunk.rules[offset] = new_rule.clone().expect("a set has a rule");
                            txn = txn.then(put(key, &chunk));
                        }
                        RuleEdit::Insert(..) => {
                            chunk.rules.insert(offset, new_rule.clone().expect("an insert has a rule"));
                            if chunk.rules.len() > RULE_CHUNK {
                                let tail = chunk.rules.split_off(chunk.rules.len() / 2);
                                let second = PolicyRules { policy: header.id, id: next_id, rules: tail };
                                header.chunks.insert(c + 1, ChunkRef { id: next_id, len: second.rules.len() });
                                txn = txn.then(put(keys::policy_rules(header.id, next_id), &second));
                            }
                            header.chunks[c].len = chunk.rules.len();
                            txn = txn.then(put(key, &chunk)).then(put(keys::policy(header.id), &header));
                        }
                        RuleEdit::Delete(_) => {
                            chunk.rules.remove(offset);
                            if chunk.rules.is_empty() {
                                header.chunks.remove(c);
                                txn = txn.then(put(keys::policy(header.id), &header)).then(del(key));
                            } else {
                                header.chunks[c].len = chunk.rules.len();
                                txn = txn.then(put(key, &chunk)).then(put(keys::policy(header.id), &header));
                            }
                        }
                    }
                }
            }
            // Refused (Guard::PolicyChanged, ChunkChanged or ChunkTaken): read again.
            if !self.commit(txn).await?.is_committed() {
                continue;
            }
            let rules = header.chunks.iter().map(|c| c.len).sum();
            let stored_ms = started.elapsed().as_secs_f64() * 1e3;
            tracing::info!(policy = %header.fq_name, index, rules, stored_ms, "policy rule {}", edit.verb());
            // Warnings come after the change is stored (and on its way to
            // the agents): they compare the rule with every other one (the
            // chunks are parsed only where they changed), off the runtime's
            // workers: tens of milliseconds of 50,000 comparisons there held
            // up the tasks that push the change to the agents.
            let warnings = match (&edit, self.read_policy(header.id).await?) {
                (RuleEdit::Set(..) | RuleEdit::Insert(..), Some((p, _))) => {
                    match tokio::task::spawn_blocking(move || tessera_model::shadow::warnings_about(p.rules.iter(), index)).await
                    {
                        Ok(warnings) => warnings,
                        // The change is stored: it is answered, without warnings.
                        Err(e) => {
                            tracing::error!(policy = %header.fq_name, error = %e, "cannot compare the rule with the others");
                            Vec::new()
                        }
                    }
                }
                _ => Vec::new(),
            };
            tracing::debug!(policy = %header.fq_name, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "rule edit answered");
            return Ok(RuleChange { policy: header.id, fq_name: header.fq_name, index, rule: new_rule, rules, warnings });
        }
        Err(Error::Conflict(format!("policy {reference}")))
    }

    /// Checks that every network the rules of a policy of `project` name
    /// exists and, when it is another project's, is shared with `project` (a policy names
    /// another project's network only with that project's consent): each
    /// distinct name once (a 50,000-rule policy names a handful of networks),
    /// the error naming the first rule that uses a missing or closed one.
    async fn check_rule_networks(&self, project: &ProjectName, rules: &[Rule]) -> Result<()> {
        let mut first_use: BTreeMap<&FqName, (usize, &str)> = BTreeMap::new();
        for (i, rule) in rules.iter().enumerate() {
            for (side, ep) in [("src", &rule.src), ("dst", &rule.dst)] {
                if let tessera_model::RuleEndpoint::Network(n) = ep {
                    first_use.entry(n).or_insert((i, side));
                }
            }
        }
        let mut refused: Option<(usize, Error)> = None;
        for (n, (i, side)) in first_use {
            if refused.as_ref().is_some_and(|(j, _)| *j < i) {
                continue;
            }
            let field = format!("rules[{i}].{side}");
            let Some(kv) = self.store.get(&keys::network_name(n)).await? else {
                refused = Some((i, Error::NotFound { kind: "network", name: n.to_string(), field: Some(field) }));
                continue;
            };
            if n.project() == project {
                continue;
            }
            let shared = self
                .get_json::<tessera_model::Network>(&keys::network(uuid_of(&kv)?))
                .await?
                .is_some_and(|(net, _)| net.usable_by(project));
            if !shared {
                let reason = format!(
                    "network {n} is project {}'s and not shared with {project}: a policy names another project's network only when it is shared",
                    n.project()
                );
                refused = Some((i, FieldError::new(field, reason).into()));
            }
        }
        match refused {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Deletes a policy attached to no network. Deleting a missing policy is Ok.
    pub async fn delete_policy(&self, reference: &str) -> Result<()> {
        let (policy, rev) = match self.find_policy_in(reference, &ProjectName::default_project()).await {
            Ok(p) => p,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let users: Vec<String> = self
            .list_networks(None)
            .await?
            .into_iter()
            .filter(|n| n.policies.contains(&policy.id))
            .map(|n| n.fq_name.to_string())
            .collect();
        if !users.is_empty() {
            return Err(Error::InUse { kind: "policy", name: policy.fq_name.to_string(), users });
        }
        let mut txn = GuardedTxn::new()
            .guard(Guard::PolicyChanged, Compare::ModRevision(keys::policy(policy.id), rev))
            .then(del(keys::policy(policy.id)))
            .then(del(keys::policy_name(&policy.fq_name)));
        for c in policy.rules.chunks() {
            txn = txn.then(del(keys::policy_rules(policy.id, c.id)));
        }
        if self.commit(txn).await?.is_committed() {
            return Ok(());
        }
        // Guard::PolicyChanged: the policy changed since it was read.
        Err(Error::Conflict(format!("policy {reference}")))
    }
}

/// A rule-level edit of a policy.
enum RuleEdit {
    Set(usize, RuleSpec),
    Insert(Option<usize>, RuleSpec),
    Delete(usize),
}

impl RuleEdit {
    fn verb(&self) -> &'static str {
        match self {
            RuleEdit::Set(..) => "replaced",
            RuleEdit::Insert(..) => "inserted",
            RuleEdit::Delete(_) => "deleted",
        }
    }
}

/// The store operations that write `policy`: its chunks that `old` (the
/// chunks stored now) does not hold, then its header, then deletions of the
/// chunks of `old` it no longer has. Chunks first: an agent assembles a
/// policy when its header arrives.
fn policy_ops(policy: &Policy, old: &[ChunkRef]) -> Vec<Op> {
    let mut ops = Vec::new();
    for c in policy.rules.chunks() {
        if !old.iter().any(|o| o.id == c.id) {
            let stored = PolicyRules { policy: policy.id, id: c.id, rules: c.rules.clone() };
            ops.push(put(keys::policy_rules(policy.id, c.id), &stored));
        }
    }
    ops.push(put(keys::policy(policy.id), &PolicyHeader::of(policy)));
    for o in old {
        if !policy.rules.chunks().iter().any(|c| c.id == o.id) {
            ops.push(del(keys::policy_rules(policy.id, o.id)));
        }
    }
    ops
}

/// `rules` in chunks: a chunk equal to one of `old` at the same place keeps
/// it (its id, not rewritten); the others get new ids, so that an agent
/// takes them in only with the header that lists them.
fn rechunk(old: &Rules, rules: Vec<Rule>) -> Rules {
    let fresh = Rules::from_vec(rules);
    let mut next = old.chunks().iter().map(|c| c.id + 1).max().unwrap_or(0);
    let chunks = fresh.chunks().iter().enumerate().map(|(i, c)| match old.chunks().get(i) {
        Some(o) if o.rules == c.rules => o.clone(),
        _ => {
            next += 1;
            Arc::new(RuleChunk::new(next - 1, c.rules.clone()))
        }
    });
    Rules::from_chunks(chunks.collect::<Vec<_>>())
}
