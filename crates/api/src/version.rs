//! Versions between Tessera's parts. Every call between them (CLI, agents
//! and plugins to a controller; the CLI and plugins to an agent's local
//! API) carries the caller's version in [`HEADER`], and every answer the
//! server's. The supported window: the same major version and a minor
//! version at most one apart (0.2 works with 0.1 and 0.3). Within it, a
//! server decodes what a newer caller sends without the fields it does not
//! know (never refusing them), and a client skips objects of kinds it does
//! not know; outside it, the server refuses the call with
//! `version_skew`, naming both versions.

/// The header that carries a part's version.
pub const HEADER: &str = "tessera-version";

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A `MAJOR.MINOR.PATCH` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    /// `MAJOR.MINOR.PATCH`, with anything after a `-` or `+` ignored.
    pub fn parse(s: &str) -> Option<Version> {
        let core = s.trim().split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        let v = Version { major: parts.next()??, minor: parts.next()??, patch: parts.next()?? };
        parts.next().is_none().then_some(v)
    }

    /// This build's.
    pub fn ours() -> Version {
        Version::parse(VERSION).expect("the crate's version is MAJOR.MINOR.PATCH")
    }

    /// Whether a part of version `self` works with one of `other`.
    pub fn within_window(self, other: Version) -> bool {
        self.major == other.major && self.minor.abs_diff(other.minor) <= 1
    }

    /// Whether `self` is newer than `other` by its major or minor version
    /// (a part that may send what `other` does not know).
    pub fn newer_than(self, other: Version) -> bool {
        (self.major, self.minor) > (other.major, other.minor)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The version a call's caller declared, in the request's extensions
/// ([`layer`]); absent when it declared none (a person with curl).
#[derive(Debug, Clone, Copy)]
pub struct CallerVersion(pub Version);

/// axum middleware of every Tessera server: refuses a caller whose version
/// is outside the window (`version_skew`, HTTP 400) or unreadable, records
/// the caller's version for [`decode`], and stamps every answer with this
/// build's version.
pub async fn layer(mut req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let ours = Version::ours();
    let declared = req.headers().get(HEADER).map(|v| v.to_str().ok().and_then(Version::parse));
    let refusal = |message: String| {
        let body = crate::ErrorBody::new(tessera_model::ErrorCode::VersionSkew, message, Some(HEADER));
        (axum::http::StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    };
    let mut resp = match declared {
        Some(None) => refusal(format!("{HEADER} is not MAJOR.MINOR.PATCH")),
        Some(Some(v)) if !v.within_window(ours) => refusal(format!(
            "version {v} of the caller is outside this server's window (it is {ours}; parts work together within one minor \
             version of the same major): upgrade the older part"
        )),
        Some(Some(v)) => {
            req.extensions_mut().insert(CallerVersion(v));
            next.run(req).await
        }
        None => next.run(req).await,
    };
    resp.headers_mut().insert(HEADER, axum::http::HeaderValue::from_static(VERSION));
    resp
}

/// The most unknown fields one body may lose (each costs a decode).
const UNKNOWN_FIELDS_MAX: usize = 64;

/// `bytes` as `T`, or the error with the path of the field at fault. From a
/// caller newer than this build (`caller`), a field `T` does not know is
/// dropped (and logged) rather than refused: a newer part may send what
/// this one has no use for. From anyone else it is refused.
pub fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    caller: Option<CallerVersion>,
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // Nothing but whitespace after the value.
    let strict = serde_path_to_error::deserialize(&mut de).and_then(|v| {
        de.end().map(|()| v).map_err(|e| serde_path_to_error::Error::new(serde_path_to_error::Track::new().path(), e))
    });
    let newer = caller.is_some_and(|c| c.0.newer_than(Version::ours()));
    let Err(first) = strict else { return strict };
    if !newer || unknown_field(&first).is_none() {
        return Err(first);
    }
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes) else { return Err(first) };
    let mut error = first;
    for _ in 0..UNKNOWN_FIELDS_MAX {
        let Some(field) = unknown_field(&error) else { return Err(error) };
        let path = error.path().to_string();
        if !remove_at(&mut value, &path, &field) {
            return Err(error);
        }
        tracing::debug!(field = %path, caller = %caller.map(|c| c.0.to_string()).unwrap_or_default(), "a field of a newer caller ignored");
        match serde_path_to_error::deserialize(&value) {
            Ok(v) => return Ok(v),
            Err(e) => error = e,
        }
    }
    Err(error)
}

/// The field an "unknown field" error names.
fn unknown_field(e: &serde_path_to_error::Error<serde_json::Error>) -> Option<String> {
    let message = e.inner().to_string();
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// Removes `field` from the object at `path` (`a.b[2].field`: the path of
/// the field itself) in `value`; whether it was there.
fn remove_at(value: &mut serde_json::Value, path: &str, field: &str) -> bool {
    let parent = path.strip_suffix(field).unwrap_or(path).trim_end_matches('.');
    let mut at = value;
    if !parent.is_empty() && parent != "." {
        for step in parent.split('.') {
            let (key, indices) = match step.find('[') {
                Some(i) => (&step[..i], &step[i..]),
                None => (step, ""),
            };
            if !key.is_empty() {
                let Some(next) = at.get_mut(key) else { return false };
                at = next;
            }
            for index in indices.split(['[', ']']).filter(|s| !s.is_empty()) {
                let Some(next) = index.parse::<usize>().ok().and_then(|i| at.get_mut(i)) else { return false };
                at = next;
            }
        }
    }
    at.as_object_mut().is_some_and(|o| o.remove(field).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_one_minor_version_either_way_within_a_major() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("0.2.0").within_window(v("0.1.7")));
        assert!(v("0.2.0").within_window(v("0.3.0-rc.1")));
        assert!(!v("0.2.0").within_window(v("0.4.0")));
        assert!(!v("1.2.0").within_window(v("0.2.0")));
        assert!(v("0.3.0").newer_than(v("0.2.9")));
        assert!(!v("0.2.9").newer_than(v("0.2.0")));
        assert_eq!(Version::parse("0.2"), None);
        assert_eq!(Version::parse("0.2.0.1"), None);
        assert_eq!(Version::parse("x.2.0"), None);
        assert_eq!(v(VERSION), Version::ours());
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        inner: Inner,
        list: Vec<Inner>,
    }

    #[test]
    fn a_newer_callers_unknown_fields_are_dropped_and_anyone_elses_refused() {
        let body = br#"{"name":"x","new":1,"inner":{"a":1,"later":true},"list":[{"a":2},{"a":3,"more":[1]}]}"#;
        let want = Outer { name: "x".into(), inner: Inner { a: 1 }, list: vec![Inner { a: 2 }, Inner { a: 3 }] };
        let ours = Version::ours();
        let newer = CallerVersion(Version { minor: ours.minor + 1, patch: 0, ..ours });
        assert_eq!(decode::<Outer>(body, Some(newer)).unwrap(), want);
        for caller in [None, Some(CallerVersion(ours))] {
            let e = decode::<Outer>(body, caller).unwrap_err();
            assert_eq!(e.path().to_string(), "new", "{e}");
        }
        // What is wrong besides is still refused, with its path.
        let bad = br#"{"name":"x","new":1,"inner":{"a":"one"},"list":[]}"#;
        let e = decode::<Outer>(bad, Some(newer)).unwrap_err();
        assert_eq!(e.path().to_string(), "inner.a", "{e}");
        // So is anything after the value.
        assert!(decode::<Inner>(br#"{"a":1} {"a":2}"#, None).is_err());
        assert_eq!(decode::<Inner>(b" {\"a\":1}\n", None).unwrap(), Inner { a: 1 });
    }
}
