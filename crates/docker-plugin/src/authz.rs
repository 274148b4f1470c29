//! The authz hook: with `dockerd --authorization-plugin tessera`, Docker
//! shows the plugin every API request before carrying it out. The network
//! driver protocol never shows a network's name or labels, nor lets a driver
//! refuse a removal; the hook can, so with it:
//!
//! - `docker network create -d tessera` is checked whole (labels included)
//!   and refused with the reason before Docker makes anything, and the
//!   plugin learns the name and labels for `CreateNetwork`;
//! - `docker network rm` of a Tessera network that has endpoints on other
//!   hosts is refused (Docker itself refuses when this host has some).
//!
//! Every other request is allowed untouched, and so is anything the hook
//! cannot read: it never stands in dockerd's way otherwise.

use std::collections::BTreeSet;

use crate::driver::Plugin;
use crate::protocol::{decode, AuthzRequest, AuthzResponse, EngineNetworkCreate, PLUGIN_NAME};
use crate::spec::{self, DockerNetworkSpec, DockerSubnet};

/// What an API request is, for the hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    NetworkCreate,
    /// `DELETE /networks/{name or id}`.
    NetworkDelete(&'a str),
    Other,
}

/// Classifies a request by method and path (`/v1.41/networks/create`, `/networks/x`).
pub fn classify<'a>(method: &str, uri: &'a str) -> Request<'a> {
    let path = uri.split('?').next().unwrap_or_default();
    let mut parts = path.trim_start_matches('/').split('/').collect::<Vec<_>>();
    if parts.first().is_some_and(|p| p.starts_with('v') && p[1..].chars().all(|c| c.is_ascii_digit() || c == '.')) {
        parts.remove(0);
    }
    match (method, parts.as_slice()) {
        ("POST", ["networks", "create"]) => Request::NetworkCreate,
        ("DELETE", ["networks", reference]) if !reference.is_empty() => Request::NetworkDelete(reference),
        _ => Request::Other,
    }
}

impl Plugin {
    /// `AuthZPlugin.AuthZReq`.
    pub async fn authorize(&self, req: &AuthzRequest) -> AuthzResponse {
        match classify(&req.request_method, &req.request_uri) {
            Request::NetworkCreate => self.authorize_create(req),
            Request::NetworkDelete(reference) => self.authorize_delete(reference).await,
            Request::Other => AuthzResponse::allow(),
        }
    }

    fn authorize_create(&self, req: &AuthzRequest) -> AuthzResponse {
        let Ok(create) = decode::<EngineNetworkCreate>(&req.request_body) else {
            return AuthzResponse::allow(); // Docker itself answers malformed requests
        };
        if create.driver != PLUGIN_NAME {
            return AuthzResponse::allow();
        }
        let ipam = create.ipam.clone().unwrap_or_default();
        let subnets: Vec<DockerSubnet> = ipam
            .config
            .iter()
            .filter_map(|c| Some(DockerSubnet { pool: c.subnet?, gateway: c.gateway, ip_range: c.ip_range }))
            .collect();
        // A network mapped onto an existing Tessera network takes nothing from its labels.
        if !create.options.contains_key(spec::OPT_NETWORK) && ipam.driver == PLUGIN_NAME {
            let spec = DockerNetworkSpec {
                name: create.name.clone(),
                labels: create.labels.clone(),
                options: create.options.clone(),
                subnets: subnets.clone(),
            };
            if let Err(e) = spec::network_create(&spec) {
                tracing::info!(network = %create.name, error = %e, "docker network create refused");
                return AuthzResponse::deny(e.to_string());
            }
        }
        self.push_pending_create(&create, subnets.iter().map(|s| s.pool).collect::<BTreeSet<_>>());
        AuthzResponse::allow()
    }

    async fn authorize_delete(&self, reference: &str) -> AuthzResponse {
        let net = match self.bound_network(reference).await {
            Ok(Some(n)) if spec::is_docker_network(&n) => n,
            Ok(_) => return AuthzResponse::allow(),
            Err(e) => {
                tracing::warn!(network = reference, error = %e, "cannot check a network removal; allowed");
                return AuthzResponse::allow();
            }
        };
        let endpoints = match self.ctl.endpoints(Some(net.id), None).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(network = %net.fq_name, error = %e, "cannot check a network removal; allowed");
                return AuthzResponse::allow();
            }
        };
        // This host's endpoints: Docker refuses on its own, with its own message.
        let elsewhere: BTreeSet<&str> = endpoints.iter().filter(|e| e.host != self.cfg.host).map(|e| e.host.as_str()).collect();
        if elsewhere.is_empty() {
            return AuthzResponse::allow();
        }
        let hosts: Vec<&str> = elsewhere.into_iter().collect();
        tracing::info!(network = %net.fq_name, hosts = ?hosts, "docker network rm refused: in use on other hosts");
        AuthzResponse::deny(format!(
            "network {} is in use by {} endpoint(s) on host(s) {}; it is removed everywhere once they leave",
            spec::docker_name(&net),
            endpoints.iter().filter(|e| e.host != self.cfg.host).count(),
            hosts.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn plugin() -> Plugin {
        crate::driver::unconnected_plugin()
    }

    fn authz_create(body: serde_json::Value) -> AuthzRequest {
        AuthzRequest {
            request_method: "POST".into(),
            request_uri: "/v1.41/networks/create".into(),
            request_body: body.to_string().into_bytes(),
            ..Default::default()
        }
    }

    #[test]
    fn requests_are_classified_by_method_and_path() {
        assert_eq!(classify("POST", "/v1.41/networks/create"), Request::NetworkCreate);
        assert_eq!(classify("POST", "/networks/create?x=1"), Request::NetworkCreate);
        assert_eq!(classify("DELETE", "/v1.41/networks/net4"), Request::NetworkDelete("net4"));
        assert_eq!(classify("GET", "/v1.41/networks/net4"), Request::Other);
        assert_eq!(classify("DELETE", "/v1.41/containers/c1"), Request::Other);
        assert_eq!(classify("POST", "/v1.41/networks/prune"), Request::Other);
    }

    #[tokio::test]
    async fn a_malformed_rt_label_is_refused_and_everything_else_allowed() {
        let p = plugin();
        let bad = authz_create(serde_json::json!({
            "Name": "net4", "Driver": "tessera", "Labels": {"rt": "banana"},
            "IPAM": {"Driver": "tessera", "Config": [{"Subnet": "10.0.0.0/24"}]}
        }));
        let r = p.authorize(&bad).await;
        assert!(!r.allow);
        assert!(r.msg.contains("label rt") && r.msg.contains("banana"), "{}", r.msg);
        let other =
            AuthzRequest { request_method: "GET".into(), request_uri: "/v1.41/containers/json".into(), ..Default::default() };
        assert!(p.authorize(&other).await.allow);
        let bridge = authz_create(serde_json::json!({"Name": "b", "Driver": "bridge", "Labels": {"rt": "banana"}}));
        assert!(p.authorize(&bridge).await.allow);
    }

    #[tokio::test]
    async fn the_name_and_labels_are_kept_for_create_network() {
        let p = plugin();
        let ok = authz_create(serde_json::json!({
            "Name": "net4", "Driver": "tessera", "Labels": {"rt": "64512:100"}, "Options": {"vni": "7"},
            "IPAM": {"Driver": "tessera", "Config": [{"Subnet": "10.0.0.0/24"}]}
        }));
        assert!(p.authorize(&ok).await.allow);
        let pools = BTreeSet::from(["10.0.0.0/24".parse().unwrap()]);
        let opts = BTreeMap::from([("vni".to_string(), "7".to_string())]);
        assert!(p.take_pending_create(&pools, &BTreeMap::new()).is_none(), "options must match too");
        let seen = p.take_pending_create(&pools, &opts).unwrap();
        assert_eq!((seen.name.as_str(), seen.labels["rt"].as_str()), ("net4", "64512:100"));
        assert!(p.take_pending_create(&pools, &opts).is_none(), "taken once");
    }

    #[tokio::test]
    async fn a_removal_it_cannot_check_is_allowed() {
        let p = plugin(); // no dockerd, no controller behind it
        let del =
            AuthzRequest { request_method: "DELETE".into(), request_uri: "/v1.41/networks/net4".into(), ..Default::default() };
        assert!(p.authorize(&del).await.allow);
    }
}
