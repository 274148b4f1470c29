//! Where the controllers are: a `--controller` value (one URL, several
//! separated by commas, or a name that resolves to several addresses) as
//! the list of controllers a [`crate::ControllerClient`] tries in turn, and
//! the record of why each one it tried failed.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// One controller to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The base URL requests go to (`https://c1:8082`), without a trailing `/`.
    pub base: String,
    /// The address the URL's host name is pinned to, when the name resolved
    /// to several: the connection goes to that address while TLS still
    /// verifies the name (`curl --resolve`).
    pub pin: Option<(String, SocketAddr)>,
}

impl Target {
    /// How errors and logs name this controller: the URL, and the address
    /// when the name stands for several.
    pub fn label(&self) -> String {
        match &self.pin {
            Some((_, addr)) => format!("{} ({})", self.base, addr.ip()),
            None => self.base.clone(),
        }
    }
}

/// Why a `--controller` value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("controller URL {url:?}: {reason}")]
pub struct BadTargets {
    pub url: String,
    pub reason: String,
}

/// The controllers of `list` (URLs separated by commas), in order. A URL
/// whose host is a name that resolves to several addresses stands for one
/// controller per address, in the resolver's order; a name that does not
/// resolve now, or resolves to one address, stays one target resolved at
/// each connection.
pub fn parse(list: &str) -> Result<Vec<Target>, BadTargets> {
    parse_with(list, |host, port| (host, port).to_socket_addrs().map(|a| a.collect()).unwrap_or_default())
}

/// [`parse`] with the resolver given (pure, for tests).
pub fn parse_with(list: &str, resolve: impl Fn(&str, u16) -> Vec<SocketAddr>) -> Result<Vec<Target>, BadTargets> {
    let mut out = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |reason: &str| BadTargets { url: raw.to_string(), reason: reason.to_string() };
        let url = reqwest::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https"));
        }
        let base = raw.trim_end_matches('/').to_string();
        let port = url.port_or_known_default().ok_or_else(|| bad("no port"))?;
        if url.host_str().is_none() {
            return Err(bad("no host"));
        }
        let Some(name) = url.domain().map(str::to_string) else {
            // An address: nothing to resolve.
            out.push(Target { base, pin: None });
            continue;
        };
        let mut addrs = resolve(&name, port);
        addrs.dedup();
        if addrs.len() <= 1 {
            out.push(Target { base, pin: None });
        } else {
            out.extend(addrs.into_iter().map(|a| Target { base: base.clone(), pin: Some((name.clone(), a)) }));
        }
    }
    if out.is_empty() {
        return Err(BadTargets { url: list.to_string(), reason: "no controller URL given".into() });
    }
    Ok(out)
}

/// One controller tried, and why it did not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The controller, as [`Target::label`] names it.
    pub controller: String,
    pub reason: String,
}

/// The controllers tried for one call, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tried(pub Vec<Failure>);

impl fmt::Display for Tried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, x) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", x.controller, x.reason)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str, _: u16) -> Vec<SocketAddr> {
        vec![]
    }

    #[test]
    fn one_url_is_one_controller() {
        let t = parse_with("https://c1:8082/", none).unwrap();
        assert_eq!(t, vec![Target { base: "https://c1:8082".into(), pin: None }]);
    }

    #[test]
    fn urls_separated_by_commas_are_tried_in_order() {
        let t = parse_with("https://c1:8082, https://10.0.0.2:8082,", none).unwrap();
        assert_eq!(t.iter().map(|t| t.base.as_str()).collect::<Vec<_>>(), ["https://c1:8082", "https://10.0.0.2:8082"]);
    }

    #[test]
    fn a_name_with_several_addresses_is_one_controller_per_address_verified_by_the_name() {
        let addrs: Vec<SocketAddr> = vec!["10.0.0.1:8082".parse().unwrap(), "10.0.0.2:8082".parse().unwrap()];
        let t = parse_with("https://ctl.fabric:8082", |h, p| {
            assert_eq!((h, p), ("ctl.fabric", 8082));
            addrs.clone()
        })
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].base, "https://ctl.fabric:8082");
        assert_eq!(t[1].pin, Some(("ctl.fabric".to_string(), addrs[1])));
        assert_eq!(t[1].label(), "https://ctl.fabric:8082 (10.0.0.2)");
    }

    #[test]
    fn a_bad_url_is_named() {
        let e = parse_with("https://c1:8082,ftp://c2", none).unwrap_err();
        assert_eq!(e.url, "ftp://c2");
        assert!(parse_with(" , ", none).is_err());
    }

    #[test]
    fn the_controllers_tried_are_listed_with_their_reasons() {
        let tried = Tried(vec![
            Failure { controller: "https://c1:8082".into(), reason: "connection refused".into() },
            Failure { controller: "https://c2:8082".into(), reason: "answered 503".into() },
        ]);
        assert_eq!(tried.to_string(), "https://c1:8082: connection refused; https://c2:8082: answered 503");
    }
}
