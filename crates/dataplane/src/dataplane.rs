//! The [`Dataplane`] trait, the only way to the kernel of a host, with what
//! an apply reports ([`ApplyReport`]), and [`reconcile`]: validate, observe,
//! plan, apply.

use async_trait::async_trait;

use crate::desired::DesiredHost;
use crate::error::DataplaneError;
use crate::observed::{NftState, Observed};
use crate::op::KernelOp;
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

    /// The nftables part of [`Dataplane::observe`] alone (a data plane
    /// that carries it forward from its own transactions gives it at no
    /// cost).
    async fn observe_nft(&self) -> Result<NftState, DataplaneError> {
        Ok(self.observe().await?.nft)
    }

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
/// the kernel could not be observed. (A [`crate::Reconciler`] that is kept
/// also plans against what it knows the kernel holds.)
pub async fn reconcile(dp: &dyn Dataplane, desired: &DesiredHost) -> Result<ApplyReport, DataplaneError> {
    crate::Reconciler::new(std::time::Duration::ZERO).reconcile(dp, desired, crate::Look::Kernel).await
}
