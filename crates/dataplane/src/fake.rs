//! [`FakeDataplane`]: a [`Dataplane`] that records typed calls and keeps a
//! model of the kernel (`crate::follow`), for tests of code that
//! reconciles (no root). Errors can be injected per action and for observe.

use std::io;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::dataplane::{ApplyReport, Dataplane, KernelOpFailure};
use crate::desired::DesiredHost;
use crate::error::DataplaneError;
use crate::observed::Observed;
use crate::op::KernelOp;
use crate::policy::{rule_counters, ElementCounter, RuleCounter};
use crate::vif::VifEntry;

/// A call made to the fake, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Observe,
    ObserveNft,
    Apply(Vec<KernelOp>),
    Interfaces,
    PolicyCounters,
}

type Matcher = Box<dyn Fn(&KernelOp) -> bool + Send>;

struct Injected {
    matches: Matcher,
    errno: i32,
    /// How many more times it fires; `None`: always.
    remaining: Option<usize>,
}

#[derive(Default)]
struct State {
    kernel: Observed,
    calls: Vec<Call>,
    injected: Vec<Injected>,
    observe_errors: Vec<i32>,
    interfaces: Vec<VifEntry>,
    element_counters: Vec<ElementCounter>,
}

/// A recording, error-injecting stand-in for a Linux data plane.
#[derive(Default)]
pub struct FakeDataplane {
    state: Mutex<State>,
}

impl FakeDataplane {
    /// A fake whose kernel holds nothing of Tessera's.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake whose kernel starts as `kernel`.
    pub fn with_kernel(kernel: Observed) -> Self {
        let fake = Self::default();
        fake.lock().kernel = kernel;
        fake
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The modelled kernel state now.
    pub fn kernel(&self) -> Observed {
        self.lock().kernel.clone()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Every action passed to `apply` so far, in order.
    pub fn applied(&self) -> Vec<KernelOp> {
        self.lock()
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::Apply(a) => Some(a.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Makes every action matching `matches` fail with `errno`.
    pub fn fail_action(&self, matches: impl Fn(&KernelOp) -> bool + Send + 'static, errno: i32) {
        self.lock().injected.push(Injected { matches: Box::new(matches), errno, remaining: None });
    }

    /// Makes the next action matching `matches` fail with `errno`.
    pub fn fail_action_once(&self, matches: impl Fn(&KernelOp) -> bool + Send + 'static, errno: i32) {
        self.lock().injected.push(Injected { matches: Box::new(matches), errno, remaining: Some(1) });
    }

    /// Makes the next `observe` fail with `errno`.
    pub fn fail_observe_once(&self, errno: i32) {
        self.lock().observe_errors.push(errno);
    }

    /// What `interfaces` returns.
    pub fn set_interfaces(&self, entries: Vec<VifEntry>) {
        self.lock().interfaces = entries;
    }

    /// The per-element counters `policy_counters` sums.
    pub fn set_element_counters(&self, counters: Vec<ElementCounter>) {
        self.lock().element_counters = counters;
    }
}

fn injected_errno(injected: &mut Vec<Injected>, action: &KernelOp) -> Option<i32> {
    let i = injected.iter().position(|inj| (inj.matches)(action))?;
    let errno = injected[i].errno;
    if let Some(n) = injected[i].remaining.as_mut() {
        *n -= 1;
        if *n == 0 {
            injected.remove(i);
        }
    }
    Some(errno)
}

#[async_trait]
impl Dataplane for FakeDataplane {
    async fn observe(&self) -> Result<Observed, DataplaneError> {
        let mut s = self.lock();
        s.calls.push(Call::Observe);
        if !s.observe_errors.is_empty() {
            let errno = s.observe_errors.remove(0);
            return Err(DataplaneError::Kernel {
                op: "observe",
                object: "links".into(),
                source: io::Error::from_raw_os_error(errno),
            });
        }
        Ok(s.kernel.clone())
    }

    async fn observe_nft(&self) -> Result<crate::observed::NftState, DataplaneError> {
        let mut s = self.lock();
        s.calls.push(Call::ObserveNft);
        Ok(s.kernel.nft.clone())
    }

    async fn apply(&self, actions: &[KernelOp]) -> Result<ApplyReport, DataplaneError> {
        let mut s = self.lock();
        s.calls.push(Call::Apply(actions.to_vec()));
        let mut report = ApplyReport::default();
        for action in actions {
            let result = match injected_errno(&mut s.injected, action) {
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                None => crate::follow::follow(&mut s.kernel, action),
            };
            match result {
                Ok(()) => report.applied.push(action.clone()),
                Err(source) => report.failures.push(KernelOpFailure {
                    action: action.clone(),
                    error: DataplaneError::Kernel { op: action.op(), object: action.to_string(), source },
                }),
            }
        }
        Ok(report)
    }

    async fn interfaces(&self) -> Result<Vec<VifEntry>, DataplaneError> {
        let mut s = self.lock();
        s.calls.push(Call::Interfaces);
        Ok(s.interfaces.clone())
    }

    async fn policy_counters(&self, desired: &DesiredHost) -> Result<Vec<RuleCounter>, DataplaneError> {
        let mut s = self.lock();
        s.calls.push(Call::PolicyCounters);
        Ok(rule_counters(desired, &s.element_counters))
    }
}
