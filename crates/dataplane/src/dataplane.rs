//! The [`Dataplane`] trait, the only way to the kernel of a host, with what
//! an apply reports ([`ApplyReport`]), and [`reconcile`]: validate, observe,
//! plan, apply.

use async_trait::async_trait;
use tracing::Instrument;

use crate::desired::DesiredHost;
use crate::error::DataplaneError;
use crate::observed::Observed;
use crate::op::KernelOp;
use crate::plan::plan;
use crate::policy::RuleCounter;
use crate::vif::VifEntry;

/// One action that failed, and why.
#[derive(Debug)]
pub struct KernelOpFailure {
    pub action: KernelOp,
    pub error: DataplaneError,
}

impl std::fmt::Display for KernelOpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.action, self.error)
    }
}

/// What an [`Dataplane::apply`] did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// The actions that succeeded, in order.
    pub applied: Vec<KernelOp>,
    /// The actions that failed, in order; the others were still carried out.
    pub failures: Vec<KernelOpFailure>,
}

impl ApplyReport {
    /// True when every action succeeded (also when there were none).
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
    /// True when there was nothing to do.
    pub fn is_noop(&self) -> bool {
        self.applied.is_empty() && self.failures.is_empty()
    }
    /// The local endpoints whose container side could not be configured
    /// (which includes those whose veth could not be made).
    pub fn failed_endpoints(&self) -> impl Iterator<Item = uuid::Uuid> + '_ {
        self.endpoint_failures().map(|(id, _)| id)
    }
    /// [`ApplyReport::failed_endpoints`], each with its failure.
    pub fn endpoint_failures(&self) -> impl Iterator<Item = (uuid::Uuid, &KernelOpFailure)> + '_ {
        self.failures.iter().filter_map(|f| match &f.action {
            KernelOp::ContainerIfaceConfigure { endpoint, .. } => Some((*endpoint, f)),
            _ => None,
        })
    }
}

/// A data plane: the only code that touches the kernel of a host.
#[async_trait]
pub trait Dataplane: Send + Sync {
    /// Reads the Tessera-owned part of the kernel state.
    async fn observe(&self) -> Result<Observed, DataplaneError>;

    /// Carries out `actions` in order. A failed action is reported in
    /// [`ApplyReport::failures`] and does not stop the actions after it;
    /// removing what is already gone succeeds. All nftables actions run as
    /// one transaction, at the place of the first of them. `Err` only when
    /// nothing could be attempted.
    async fn apply(&self, actions: &[KernelOp]) -> Result<ApplyReport, DataplaneError>;

    /// The interface table (`tessera vif list`): every link of the data
    /// plane's namespace with its Tessera role and counters.
    async fn interfaces(&self) -> Result<Vec<VifEntry>, DataplaneError>;

    /// Hit counters of the policy rules, attributed to rules as `desired`
    /// (the state last reconciled) compiles them; one entry per rule of the
    /// programs of `desired`, zeros included. See [`RuleCounter`] for what a
    /// hit is. Counters start at zero when an element is installed (a rule
    /// whose boxes move to another map starts again).
    async fn policy_counters(&self, desired: &DesiredHost) -> Result<Vec<RuleCounter>, DataplaneError>;

    /// A counter that moves whenever part of Tessera's nftables tables is
    /// taken away behind the data plane's back (`nft flush ruleset`): the
    /// owner reconciles at once when it moves. `None` when the data plane
    /// cannot tell (the fake).
    fn nft_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// Validates `desired`, observes, plans and applies. Returns the apply report
/// (which lists any failed action); `Err` when the desired state is invalid or
/// the kernel could not be observed.
pub async fn reconcile(dp: &dyn Dataplane, desired: &DesiredHost) -> Result<ApplyReport, DataplaneError> {
    let span = tracing::info_span!("reconcile", underlay = %desired.underlay_ip, networks = desired.networks.len());
    async move {
        let t0 = std::time::Instant::now();
        desired.validate()?;
        let observed = dp.observe().await?;
        let t1 = std::time::Instant::now();
        let actions = plan(desired, &observed);
        // The data plane updates its own copy of what it observed as it
        // applies: it must not have to copy what this one still shares.
        drop(observed);
        let t2 = std::time::Instant::now();
        let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1e3;
        if actions.is_empty() {
            tracing::debug!(observe_ms = ms(t0, t1), plan_ms = ms(t1, t2), "data plane converged");
            return Ok(ApplyReport::default());
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let mut ops: std::collections::BTreeMap<&str, usize> = Default::default();
            for a in &actions {
                *ops.entry(a.op()).or_default() += 1;
            }
            tracing::debug!(?ops, "applying");
        }
        let report = dp.apply(&actions).await?;
        tracing::info!(
            planned = actions.len(),
            failed = report.failures.len(),
            observe_ms = ms(t0, t1),
            plan_ms = ms(t1, t2),
            apply_ms = ms(t2, std::time::Instant::now()),
            "data plane plan applied"
        );
        Ok(report)
    }
    .instrument(span)
    .await
}
