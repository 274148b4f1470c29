//! Who may call what.
//!
//! Every request but `/healthz`, `/readyz`, the OpenAPI document and the
//! web page `/ui` (which holds no data: it reads the API with a token) names
//! its caller ([`Principal`]): a client certificate of the fabric's CA (an
//! administrator's, or a host's, which its agent and Docker plugin present),
//! a bearer token (`tessera token create`), or, on a controller started with
//! `--insecure-loopback`, the plain-HTTP connection itself, which acts as an
//! administrator. A request without one is refused with 401; one its
//! principal may not make, with 403 and the reason.
//!
//! What each may do ([`authorize`], then the handlers for what depends on
//! the object: an endpoint's host):
//! - an administrator: everything;
//! - a host: register itself and report its own counters; create, delete
//!   and report the status (and a service port's health) of endpoints on itself; read the mirror
//!   (snapshot, watch), hosts, networks, endpoints and reservations; create
//!   and delete networks and reservations (its Docker plugin does, for
//!   `docker network create` and Docker's IPAM);
//! - a token of a project: a reader reads networks, policies, endpoints and
//!   its project, service templates and services; a member or project admin
//!   also changes them and reservations. Only its project's: listings are filtered to
//!   it (and to shared networks), an object of another project is refused
//!   (another project's shared network may be read and attached to), and it
//!   creates only in its project. Any of its roles reads the flow records
//!   with a side in one of its project's networks (`/v1/flows`, `follow`,
//!   `top`); a host reports flows but reads none.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tessera_api::auth::{CertIdentity, Role};
use tessera_model::ProjectName;

use crate::error::{ApiError, Error};
use crate::service::Controller;
use crate::tls::Peer;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A fabric administrator.
    Admin,
    /// The agent or plugin of one host.
    Host(String),
    /// A token's bearer, in one project.
    Project { project: ProjectName, role: Role },
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Admin => write!(f, "an administrator"),
            Principal::Host(h) => write!(f, "host {h}"),
            Principal::Project { project, role } => write!(f, "a {} of project {project}", format!("{role:?}").to_lowercase()),
        }
    }
}

/// A refusal for `principal`, saying why.
pub fn forbidden(principal: &Principal, why: &str) -> Error {
    Error::Forbidden(format!("{principal} may not {why}"))
}

fn refuse(e: Error) -> Response {
    ApiError(e).into_response()
}

/// Routes anyone may call.
fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/v1/openapi.json" | "/ui")
}

/// The middleware: names the caller, refuses what it may not do, and hands
/// the [`Principal`] to the handler.
pub async fn authenticate(State(ctl): State<Arc<Controller>>, mut req: Request, next: Next) -> Response {
    if is_open(req.uri().path()) {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0.clone());
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let principal = match (&peer, bearer) {
        (Some(Peer { insecure: true, .. }), _) => Principal::Admin,
        (Some(Peer { cert: Some(CertIdentity::Admin), .. }), _) => Principal::Admin,
        (Some(Peer { cert: Some(CertIdentity::Host(h)), .. }), _) => Principal::Host(h.clone()),
        (_, Some(secret)) => match ctl.token_principal(&secret).await {
            Ok(Some(p)) => p,
            Ok(None) => return refuse(Error::Unauthenticated("the bearer token is not valid".into())),
            Err(e) => return refuse(e),
        },
        _ => {
            return refuse(Error::Unauthenticated(
                "authentication required: present a client certificate of the fabric (tessera pki) or a bearer token (tessera token create)"
                    .into(),
            ))
        }
    };
    if let Err(why) = authorize(&principal, req.method(), req.uri().path()) {
        return refuse(forbidden(&principal, &why));
    }
    if let Err(e) = in_scope(&ctl, &principal, req.method(), req.uri().path()).await {
        return refuse(e);
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// For a token of a project, whether the object a path names is its
/// project's (another project's shared network may be read). An object that
/// does not exist is the handler's to answer.
async fn in_scope(ctl: &Controller, principal: &Principal, method: &Method, path: &str) -> Result<(), Error> {
    let Principal::Project { project, .. } = principal else { return Ok(()) };
    let segs: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let read = *method == Method::GET;
    let owner = match segs.as_slice() {
        ["projects", name] => Some((name.to_string(), false)),
        ["networks", reference, ..] => {
            ctl.get_network(reference).await.ok().map(|n| (n.fq_name.project().to_string(), n.usable_by(project)))
        }
        ["policies", reference, ..] => ctl.get_policy(reference).await.ok().map(|p| (p.fq_name.project().to_string(), false)),
        ["floating-ips", reference, ..] => ctl.get_floating_ip(reference).await.ok().map(|f| (f.project.to_string(), false)),
        ["service-templates", reference, ..] => {
            ctl.get_service_template(reference).await.ok().map(|t| (t.fq_name.project().to_string(), false))
        }
        ["services", reference, ..] => ctl.get_service(reference).await.ok().map(|s| (s.fq_name.project().to_string(), false)),
        ["endpoints", id, ..] => match ctl.get_endpoint(id).await {
            Ok(ep) => ctl.get_network(&ep.network.to_string()).await.ok().map(|n| (n.fq_name.project().to_string(), false)),
            Err(_) => None,
        },
        _ => None,
    };
    match owner {
        Some((owner, shared)) if owner != project.to_string() && !(read && shared && segs.len() == 2) => {
            Err(forbidden(principal, &format!("use {path}: it is project {owner}'s")))
        }
        _ => Ok(()),
    }
}

/// For a token of a project, the project its listings are limited to.
pub fn listing_scope(principal: &Principal) -> Option<&ProjectName> {
    match principal {
        Principal::Project { project, .. } => Some(project),
        _ => None,
    }
}

/// Whether `principal` may make the request `method path` at all; the
/// reason when not. Handlers check what depends on the object.
pub fn authorize(principal: &Principal, method: &Method, path: &str) -> Result<(), String> {
    let segs: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let read = *method == Method::GET;
    let what = || format!("{} {path}", method.as_str());
    match principal {
        Principal::Admin => Ok(()),
        Principal::Host(me) => match (segs.as_slice(), method) {
            (["snapshot"] | ["watch"] | ["hosts"] | ["hosts", _], &Method::GET) => Ok(()),
            (["hosts", name] | ["hosts", name, "counters"] | ["hosts", name, "lease"], &Method::PUT) if name == me => Ok(()),
            (["hosts", name, "flows"], &Method::POST) if name == me => Ok(()),
            (["hosts", name, ..], _) => Err(format!("act for host {name}: a host acts only for itself")),
            (["flows", ..], _) => {
                Err(format!("{}: a host reports its flows; administrators and project tokens read them", what()))
            }
            (["networks"] | ["networks", _] | ["networks", _, "reservations"], _) if read => Ok(()),
            (["networks"], &Method::POST) | (["networks", _], &Method::DELETE) => Ok(()),
            (["networks", _, "reservations"], &Method::POST) | (["networks", _, "reservations", _], &Method::DELETE) => Ok(()),
            (["endpoints"] | ["endpoints", _], _) if read => Ok(()),
            (["endpoints"], &Method::POST)
            | (["endpoints", _], &Method::DELETE)
            | (
                ["endpoints", _, "status"] | ["endpoints", _, "ports"] | ["endpoints", _, "health"] | ["endpoints", _, "netns"],
                &Method::PUT,
            ) => Ok(()),
            _ => Err(format!("{}: a host reads and changes only what its data plane and plugins need", what())),
        },
        Principal::Project { role, .. } => {
            let objects = matches!(
                segs.first(),
                Some(&("networks" | "policies" | "endpoints" | "floating-ips" | "service-templates" | "services"))
            );
            let flows = matches!(segs.as_slice(), ["flows"] | ["flows", "follow" | "top"]);
            match (objects, read, role) {
                _ if flows && read => Ok(()),
                (true, true, _) => Ok(()),
                (true, false, Role::Member | Role::Admin) => Ok(()),
                (true, false, Role::Reader) => Err(format!("{}: a reader only reads", what())),
                _ if segs.first() == Some(&"projects") && segs.len() == 2 && read => Ok(()),
                _ => Err(format!("{}: only a fabric administrator may", what())),
            }
        }
    }
}

/// A handler's check that a host acts for itself on an object of `host`.
pub fn require_host(principal: &Principal, host: &str, what: &str) -> Result<(), Error> {
    match principal {
        Principal::Host(me) if me != host => {
            Err(forbidden(principal, &format!("{what} of host {host}: a host acts only for itself")))
        }
        _ => Ok(()),
    }
}

/// A handler's check that a token of a project creates only in its project:
/// the object's project is `project`, or the one of a fully qualified `name`,
/// or the default project.
pub fn require_own_project(principal: &Principal, project: Option<&str>, name: &str) -> Result<(), Error> {
    let Principal::Project { project: mine, .. } = principal else { return Ok(()) };
    let default = project.and_then(|p| p.parse().ok()).unwrap_or_else(ProjectName::default_project);
    let target = tessera_model::FqName::resolve(name, &default).map(|f| f.project().clone()).unwrap_or(default);
    if &target != mine {
        return Err(forbidden(principal, &format!("create {name} in project {target}: a token acts in its own project")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> Principal {
        Principal::Host(h.into())
    }

    #[test]
    fn a_host_acts_only_for_itself() {
        assert!(authorize(&host("h1"), &Method::PUT, "/v1/hosts/h1").is_ok());
        assert!(authorize(&host("h1"), &Method::PUT, "/v1/hosts/h1/counters").is_ok());
        assert!(authorize(&host("h1"), &Method::PUT, "/v1/hosts/h2").unwrap_err().contains("host h2"));
        assert!(authorize(&host("h1"), &Method::DELETE, "/v1/hosts/h1").is_err());
        assert!(authorize(&host("h1"), &Method::GET, "/v1/policies").is_err());
        assert!(authorize(&host("h1"), &Method::POST, "/v1/projects").is_err());
        assert!(authorize(&host("h1"), &Method::GET, "/v1/tokens").is_err());
        assert!(authorize(&host("h1"), &Method::GET, "/v1/snapshot").is_ok());
        assert!(authorize(&host("h1"), &Method::POST, "/v1/hosts/h1/flows").is_ok());
        assert!(authorize(&host("h1"), &Method::GET, "/v1/flows").unwrap_err().contains("reports its flows"));
    }

    #[test]
    fn a_reader_only_reads_and_only_an_administrator_manages_the_fabric() {
        let reader = Principal::Project { project: "default-domain:p".parse().unwrap(), role: Role::Reader };
        let member = Principal::Project { project: "default-domain:p".parse().unwrap(), role: Role::Member };
        assert!(authorize(&reader, &Method::GET, "/v1/networks").is_ok());
        assert!(authorize(&reader, &Method::POST, "/v1/networks").is_err());
        assert!(authorize(&member, &Method::POST, "/v1/networks").is_ok());
        assert!(authorize(&member, &Method::GET, "/v1/snapshot").is_err());
        assert!(authorize(&member, &Method::PUT, "/v1/hosts/h1").is_err());
        assert!(authorize(&member, &Method::POST, "/v1/tokens").is_err());
        assert!(authorize(&Principal::Admin, &Method::POST, "/v1/tokens").is_ok());
        for path in ["/v1/flows", "/v1/flows/follow", "/v1/flows/top"] {
            assert!(authorize(&reader, &Method::GET, path).is_ok(), "{path}");
        }
        assert!(authorize(&member, &Method::POST, "/v1/flows").is_err());
        assert!(authorize(&member, &Method::POST, "/v1/hosts/h1/flows").is_err());
    }
}
