//! The interface table behind `tessera vif list`: every link of a data
//! plane's namespace, its Tessera role, addresses, state and counters. The
//! types are the agent API's (`tessera_model::vif`); the Linux data plane
//! fills them from its link and address dumps.

pub use tessera_model::vif::{VifEntry, VifKind};
