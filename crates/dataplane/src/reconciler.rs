//! [`Reconciler`]: validate, observe (or take what is known), plan, apply.
//!
//! Observing the kernel (the netlink dumps of links, addresses, routes,
//! rules, neighbour and FDB entries, and the `/proc/sys` reads) costs more
//! than most reconciles change: 5–40 ms on a host with a few dozen
//! endpoints, where a new endpoint is five actions. A reconciler keeps what
//! the kernel holds after its last apply (the last observation with every
//! applied action carried out on it by `crate::follow`) and plans a change
//! of intent against that ([`Look::Known`]).
//!
//! It observes again when asked ([`Look::Kernel`]), when it knows nothing,
//! after any failed action (the kernel refused part of the plan: what it
//! holds is not what was planned), and once what it knows derives from an
//! observation `max_age` old: a change behind Tessera's back (a link deleted
//! by hand, a container gone with its veth) is repaired within that, as
//! before. The nftables state is always the data plane's own
//! ([`Dataplane::observe_nft`]), which its transactions carry forward.
//! When it observes while it knew, it also plans against what it knew and
//! logs any difference: the kernel was changed behind Tessera's back, or the
//! model of the kernel is wrong.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::dataplane::{ApplyReport, Dataplane};
use crate::desired::DesiredHost;
use crate::error::DataplaneError;
use crate::observed::{NftState, Observed};
use crate::op::KernelOp;
use crate::plan::{plan_with, PlanMemo};

/// What a reconcile plans against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// The kernel, observed now.
    Kernel,
    /// What the reconciler knows the kernel holds, when it knows it (else
    /// the kernel).
    Known,
}

/// Reconciles one data plane, keeping what its kernel holds between
/// reconciles (see the module's documentation).
pub struct Reconciler {
    known: Mutex<Option<Known>>,
    /// The kernel objects of the last desired state planned: a change of
    /// policy alone does not compute those of 1,000 endpoints again.
    memo: Mutex<PlanMemo>,
    max_age: Duration,
}

/// The kernel's state as the last apply left it (its nftables part left
/// out), and when the observation it derives from was made.
struct Known {
    state: Observed,
    observed_at: Instant,
}

impl Reconciler {
    /// A reconciler that knows nothing yet and observes again once what it
    /// knows is `max_age` old (`Duration::ZERO`: at every reconcile).
    pub fn new(max_age: Duration) -> Self {
        Reconciler { known: Mutex::new(None), memo: Mutex::default(), max_age }
    }

    /// Validates `desired`, plans against the kernel (observed or known, see
    /// `look`) and applies. Returns the apply report (which lists any failed
    /// action); `Err` when the desired state is invalid or the kernel could
    /// not be observed.
    pub async fn reconcile(&self, dp: &dyn Dataplane, desired: &DesiredHost, look: Look) -> Result<ApplyReport, DataplaneError> {
        let span = tracing::info_span!("reconcile", underlay = %desired.underlay_ip, networks = desired.networks.len());
        self.reconcile_in_span(dp, desired, look).instrument(span).await
    }

    async fn reconcile_in_span(
        &self,
        dp: &dyn Dataplane,
        desired: &DesiredHost,
        look: Look,
    ) -> Result<ApplyReport, DataplaneError> {
        let t0 = Instant::now();
        desired.validate()?;
        let known = self.lock().take().filter(|k| k.observed_at.elapsed() < self.max_age);
        let (observed, cpu0);
        let (mut state, observed_at, actions) = match (look, known) {
            (Look::Known, Some(mut k)) => {
                k.state.nft = dp.observe_nft().await?;
                (observed, cpu0) = (Instant::now(), crate::linux::thread_cpu_time());
                let actions = plan_with(desired, &k.state, &mut self.memo());
                (k.state, k.observed_at, actions)
            }
            (_, known) => {
                let state = dp.observe().await?;
                (observed, cpu0) = (Instant::now(), crate::linux::thread_cpu_time());
                let mut memo = self.memo();
                let actions = plan_with(desired, &state, &mut memo);
                if let Some(mut k) = known {
                    k.state.nft = state.nft.clone();
                    log_difference(&plan_with(desired, &k.state, &mut memo), &actions);
                }
                (state, t0, actions)
            }
        };
        // The data plane updates its own copy of the nftables state as it
        // applies: it must not have to copy what this one still shares.
        state.nft = NftState::default();
        let looked = if observed_at == t0 { "kernel" } else { "known" };
        let t1 = Instant::now();
        // Planning runs on this thread (awaiting the observation may have moved the task).
        let cpu_ms = (crate::linux::thread_cpu_time().saturating_sub(cpu0)).as_secs_f64() * 1e3;
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        if actions.is_empty() {
            tracing::debug!(looked, observe_ms = ms(t0, t1), cpu_ms, "data plane converged");
            *self.lock() = Some(Known { state, observed_at });
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
            looked,
            observe_ms = ms(t0, observed),
            plan_ms = ms(observed, t1),
            cpu_ms,
            apply_ms = ms(t1, Instant::now()),
            "data plane plan applied"
        );
        if report.is_ok() {
            let followed = report.applied.iter().filter(|a| !a.is_nft()).try_for_each(|a| crate::follow::follow(&mut state, a));
            match followed {
                Ok(()) => *self.lock() = Some(Known { state, observed_at }),
                Err(e) => tracing::warn!(error = %e, "an applied action does not follow from the known state; observing again"),
            }
        }
        Ok(report)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, PlanMemo> {
        self.memo.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Logs how the plan against the observed kernel differs from the plan
/// against what was known of it.
fn log_difference(expected: &[KernelOp], actual: &[KernelOp]) {
    if expected == actual {
        return;
    }
    let only = |a: &[KernelOp], b: &[KernelOp]| -> Vec<String> {
        a.iter().filter(|x| !b.contains(x)).take(5).map(|x| x.to_string()).collect()
    };
    tracing::warn!(
        unexpected = ?only(actual, expected),
        missing = ?only(expected, actual),
        "the kernel differs from what the data plane knew of it (changed behind Tessera's back?); reconciling to the observed kernel"
    );
}
