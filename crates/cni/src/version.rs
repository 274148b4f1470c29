//! CNI spec versions the plugin understands and what each one changes.

use std::fmt;

use crate::error::{CniError, Code};

/// A spec version. Ordered, so `v >= Version::V0_4_0` reads as "has CHECK".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    /// Every version the plugin answers, oldest first (the `VERSION` reply).
    pub const SUPPORTED: [Version; 5] = [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0, Version::V1_0_0, Version::V1_1_0];
    /// The newest version: used for replies when the request names none.
    pub const LATEST: Version = Version::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Parses a `cniVersion`; an unknown version is error 1 (incompatible).
    pub fn parse(s: &str) -> Result<Version, CniError> {
        Version::SUPPORTED.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
            CniError::new(
                Code::IncompatibleVersion,
                format!("cniVersion {s:?} is not supported"),
                format!("supported versions: {}", Version::supported_list()),
            )
        })
    }

    pub fn supported_list() -> String {
        Version::SUPPORTED.map(Version::as_str).join(", ")
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Results before 1.0.0 tag each address with `"version": "4" | "6"`.
    pub fn tags_ip_version(self) -> bool {
        self < Version::V1_0_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_parses_back() {
        for v in Version::SUPPORTED {
            assert_eq!(Version::parse(v.as_str()).unwrap(), v);
        }
    }

    #[test]
    fn unknown_version_is_error_1() {
        let e = Version::parse("0.2.0").unwrap_err();
        assert_eq!(e.code, Code::IncompatibleVersion as u32);
        assert!(e.details.contains("1.1.0"), "{e:?}");
    }

    #[test]
    fn features_follow_the_spec() {
        assert!(!Version::V0_3_1.has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_status_and_gc());
        assert!(Version::V1_1_0.has_status_and_gc());
        assert!(Version::V0_4_0.tags_ip_version());
        assert!(!Version::V1_0_0.tags_ip_version());
    }
}
