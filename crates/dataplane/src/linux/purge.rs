//! Taking away everything Tessera made in a host's kernel: its links
//! (bridges, VXLAN devices, endpoints' host veths, whose container ends go
//! with them, and the fast path's device, whose eBPF programs and maps go
//! with it), its routing rules and the routes of its tables, and its
//! nftables tables. `tessera purge` and a package's removal use it once the
//! agent is stopped; what it removes is what [`Dataplane::observe`] calls
//! Tessera's, so nothing else of the host is touched.

use serde::Serialize;

use super::nftables::nft_delete_table;
use super::LinuxDataplane;
use crate::error::DataplaneError;
use crate::names::POLICY_TABLE;
use crate::observed::{LinkKind, Observed};
use crate::{Dataplane, KernelOp};

/// Tessera's nftables tables, as `(family, name)`.
pub const NFT_TABLES: [(&str, &str); 3] = [("inet", "tessera"), ("bridge", "tessera"), ("inet", POLICY_TABLE)];

/// What a purge finds (and, unless it only looks, removes).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Purge {
    /// Links, host veths first, then VXLAN devices, then bridges.
    pub links: Vec<String>,
    /// Routing rules, as `ip rule` prints them.
    pub rules: Vec<String>,
    /// Routes of Tessera's tables, as `ip route` prints them.
    pub routes: Vec<String>,
    /// nftables tables, as `FAMILY NAME`.
    pub nft_tables: Vec<String>,
}

impl Purge {
    pub fn is_empty(&self) -> bool {
        self.links.is_empty() && self.rules.is_empty() && self.routes.is_empty() && self.nft_tables.is_empty()
    }
}

/// The removals that take `observed` away: rules, then routes, then links
/// (host veths before the VXLAN devices and bridges they hang on).
fn removals(observed: &Observed) -> Vec<KernelOp> {
    let rank = |kind: &LinkKind| match kind {
        LinkKind::Veth => 0,
        LinkKind::Vxlan(_) => 1,
        LinkKind::Bridge => 2,
        LinkKind::Other(_) => 3,
    };
    let mut links: Vec<(&String, u8)> = observed.links.iter().map(|(name, l)| (name, rank(&l.kind))).collect();
    links.sort_by_key(|(name, rank)| (*rank, (*name).clone()));
    let rules = observed.rules.iter().cloned().map(KernelOp::RuleUninstall);
    let routes = observed.routes.iter().cloned().map(KernelOp::RouteUninstall);
    let links = links.into_iter().map(|(name, _)| KernelOp::LinkDelete { name: name.clone() });
    rules.chain(routes).chain(links).collect()
}

/// What Tessera has in the kernel `dp` sees, and the removals that take it away.
async fn inventory(dp: &LinuxDataplane) -> Result<(Purge, Vec<KernelOp>), DataplaneError> {
    let mut ops = removals(&dp.observe().await?);
    // The fast path's device, last: its programs and maps go with it and
    // with the host veths.
    if super::fastpath::md_device_present().await.map_err(|e| DataplaneError::Purge(e.to_string()))? {
        ops.push(KernelOp::LinkDelete { name: crate::fastpath::MD_DEVICE.to_string() });
    }
    let mut found = Purge::default();
    for op in &ops {
        match op {
            KernelOp::RuleUninstall(_) => found.rules.push(op.to_string()),
            KernelOp::RouteUninstall(_) => found.routes.push(op.to_string()),
            KernelOp::LinkDelete { name } => found.links.push(name.clone()),
            _ => {}
        }
    }
    for (family, name) in NFT_TABLES {
        if super::nftables::nft_list(&["list", "table", family, name]).await?.is_some() {
            found.nft_tables.push(format!("{family} {name}"));
        }
    }
    Ok((found, ops))
}

/// What Tessera has in the kernel of this thread's network namespace, and,
/// when `remove`, takes it all away and checks that nothing is left.
pub async fn purge(remove: bool) -> Result<Purge, DataplaneError> {
    let dp = LinuxDataplane::new().await?;
    let (found, ops) = inventory(&dp).await?;
    if !remove {
        return Ok(found);
    }
    let report = dp.apply(&ops).await?;
    if let Some(f) = report.failures.first() {
        return Err(DataplaneError::Purge(format!("{} of {} removals failed, first: {f}", report.failures.len(), ops.len())));
    }
    for (family, name) in NFT_TABLES {
        nft_delete_table(family, name).await?;
    }
    // Nothing of it may be left: a link made meanwhile (an agent that was
    // not stopped) would be.
    let (left, _) = inventory(&dp).await?;
    if !left.is_empty() {
        return Err(DataplaneError::Purge(format!(
            "still present after removal (is an agent running?): links {:?}, rules {:?}, routes {:?}, nftables {:?}",
            left.links, left.rules, left.routes, left.nft_tables
        )));
    }
    Ok(found)
}
