//! The cluster: the identity of a fabric's store, written once when the
//! store is made, so that a controller never serves an empty store it was
//! not told to make, and agents can tell a new store from theirs.

use tessera_store::Compare;
use uuid::Uuid;

use super::controller::Controller;
use super::projects::ProjectCreate;
use super::txn::{put_str, Guard, GuardedTxn};
use crate::error::{Error, Result};
use crate::keys;

impl Controller {
    /// Makes the store ready to serve and returns its cluster ID.
    ///
    /// A store with a cluster ID is served as it is. A store without one is
    /// made a cluster: an empty one only when `init` says so (`tessera
    /// controller --init`; otherwise [`Error::Uninitialized`]: a missing or
    /// emptied store file must not look like a fabric with no networks), one
    /// holding objects of an earlier version always. Then the default
    /// project is made. Idempotent.
    pub async fn bootstrap(&self, init: bool) -> Result<Uuid> {
        let id = match self.store().get(keys::CLUSTER).await? {
            Some(kv) => std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::Corrupt { key: keys::CLUSTER.into(), reason: "not a UUID".into() })?,
            None => {
                let empty = self.store().range_keys(keys::ROOT).await?.kvs.is_empty();
                if empty && !init {
                    return Err(Error::Uninitialized);
                }
                let id = Uuid::new_v4();
                let txn = GuardedTxn::new()
                    .guard(Guard::NameTaken, Compare::Absent(keys::CLUSTER.into()))
                    .then(put_str(keys::CLUSTER.into(), &id.to_string()));
                if !self.commit(txn).await?.is_committed() {
                    // Guard::NameTaken: another controller made it first.
                    return Box::pin(self.bootstrap(init)).await;
                }
                tracing::info!(cluster = %id, new_store = empty, "cluster made");
                id
            }
        };
        self.create_project(ProjectCreate { name: tessera_model::DEFAULT_PROJECT.into() }).await?;
        Ok(id)
    }
}
