//! Networks as endpoint creates last found them, by the reference the
//! request named. An endpoint create uses only what never changes in a
//! network (its id, name, subnets' prefixes, whether it is external), and
//! its transaction requires the network to exist: a network found here that
//! was deleted meanwhile fails that compare, and the create forgets it and
//! looks the reference up again (a new network of the same name). So a
//! create of an endpoint in a known network reads nothing before it writes.

use std::collections::HashMap;
use std::sync::Mutex;

use tessera_model::Network;

/// At most this many references are remembered; past it, all are forgotten.
const SEEN_NETWORKS: usize = 4096;

#[derive(Default)]
pub(super) struct SeenNetworks(Mutex<HashMap<String, Network>>);

impl SeenNetworks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Network>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, reference: &str) -> Option<Network> {
        self.lock().get(reference).cloned()
    }

    pub(super) fn remember(&self, reference: &str, network: &Network) {
        let mut seen = self.lock();
        if seen.len() >= SEEN_NETWORKS {
            seen.clear();
        }
        seen.insert(reference.to_owned(), network.clone());
    }

    pub(super) fn forget(&self, reference: &str) {
        self.lock().remove(reference);
    }
}
