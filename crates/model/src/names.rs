//! Names and identifiers: fully qualified names, project names, VNIs and the
//! name of an endpoint's host interface.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The domain of the default project, as in the seeds.
pub const DEFAULT_DOMAIN: &str = "default-domain";
/// The project used when a request names none.
pub const DEFAULT_PROJECT: &str = "default-domain:admin";

const MAX_COMPONENT: usize = 128;

/// Checks one component of a fully qualified name: 1 to 128 characters of
/// letters, digits, `-`, `_` and `.`, not starting with `-` or `.`.
pub fn check_component(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_COMPONENT {
        return Err(format!("is {} characters long, the limit is {MAX_COMPONENT}", s.len()));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!("contains {c:?}; use letters, digits, '-', '_' and '.'"));
    }
    if s.starts_with(['-', '.']) {
        return Err("must start with a letter, a digit or '_'".into());
    }
    Ok(())
}

/// The prefix of the host side of every endpoint's veth (`ip link` shows `tv…`).
pub const VETH_PREFIX: &str = "tv";

/// `tv` + the first 8 hex digits of the endpoint id: the host side of the
/// endpoint's veth. The agent names it so; runtimes report it (a CNI result
/// lists it) without asking.
pub fn host_veth_name(id: uuid::Uuid) -> String {
    // Written digit by digit: planners name every endpoint's veth on every
    // plan, and formatting the whole id cost more than the rest of that.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = String::with_capacity(VETH_PREFIX.len() + 8);
    name.push_str(VETH_PREFIX);
    for b in &id.as_bytes()[..4] {
        name.push(char::from(HEX[usize::from(b >> 4)]));
        name.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    name
}

/// A project's fully qualified name, `domain:project`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProjectName {
    domain: String,
    project: String,
}

impl ProjectName {
    pub fn new(domain: &str, project: &str) -> Result<Self, String> {
        check_component(domain).map_err(|r| format!("domain {r}"))?;
        check_component(project).map_err(|r| format!("project {r}"))?;
        Ok(ProjectName { domain: domain.into(), project: project.into() })
    }

    pub fn default_project() -> Self {
        ProjectName { domain: DEFAULT_DOMAIN.into(), project: "admin".into() }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// The fully qualified name of object `name` in this project.
    pub fn child(&self, name: &str) -> Result<FqName, String> {
        check_component(name).map_err(|r| format!("name {r}"))?;
        Ok(FqName { project: self.clone(), name: name.into() })
    }
}

impl FromStr for ProjectName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split(':').collect::<Vec<_>>().as_slice() {
            [domain, project] => ProjectName::new(domain, project),
            [project] => ProjectName::new(DEFAULT_DOMAIN, project),
            _ => Err(format!("{s:?} is not a project name; expected DOMAIN:PROJECT")),
        }
    }
}

impl TryFrom<String> for ProjectName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ProjectName> for String {
    fn from(p: ProjectName) -> String {
        p.to_string()
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.domain, self.project)
    }
}

/// A fully qualified object name, `domain:project:name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FqName {
    project: ProjectName,
    name: String,
}

impl FqName {
    /// Resolves what a user typed: a bare `name` lives in `default`, a full
    /// `domain:project:name` stands for itself.
    pub fn resolve(input: &str, default: &ProjectName) -> Result<Self, String> {
        match input.split(':').collect::<Vec<_>>().as_slice() {
            [name] => default.child(name),
            [domain, project, name] => ProjectName::new(domain, project)?.child(name),
            _ => Err(format!("{input:?} is neither a name nor DOMAIN:PROJECT:NAME")),
        }
    }

    pub fn project(&self) -> &ProjectName {
        &self.project
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl FromStr for FqName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split(':').collect::<Vec<_>>().as_slice() {
            [domain, project, name] => ProjectName::new(domain, project)?.child(name),
            _ => Err(format!("{s:?} is not a fully qualified name; expected DOMAIN:PROJECT:NAME")),
        }
    }
}

impl TryFrom<String> for FqName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<FqName> for String {
    fn from(n: FqName) -> String {
        n.to_string()
    }
}

impl fmt::Display for FqName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.project, self.name)
    }
}

/// A VXLAN network identifier: 24 bits, 0 excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vni(u32);

impl Vni {
    pub const MIN: u32 = 1;
    pub const MAX: u32 = (1 << 24) - 1;
    /// Automatically assigned VNIs start here, leaving 1..4095 to operators
    /// who choose their own.
    pub const AUTO_START: u32 = 4096;

    pub fn new(v: u32) -> Result<Self, String> {
        if (Self::MIN..=Self::MAX).contains(&v) {
            Ok(Vni(v))
        } else {
            Err(format!("{v} is outside the VNI range {}..={}", Self::MIN, Self::MAX))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Vni {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        Vni::new(v)
    }
}

impl From<Vni> for u32 {
    fn from(v: Vni) -> u32 {
        v.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_veth_is_named_by_the_first_eight_hex_digits_of_its_endpoint() {
        let id: uuid::Uuid = "A1B2C3D4-0000-4000-8000-00000000000a".parse().unwrap();
        assert_eq!(host_veth_name(id), "tva1b2c3d4");
        assert_eq!(host_veth_name(uuid::Uuid::nil()), "tv00000000");
        assert_eq!(host_veth_name(uuid::Uuid::max()), "tvffffffff");
    }

    #[test]
    fn bare_name_resolves_in_the_default_project() {
        let n = FqName::resolve("red", &ProjectName::default_project()).unwrap();
        assert_eq!(n.to_string(), "default-domain:admin:red");
    }

    #[test]
    fn full_name_resolves_to_itself() {
        let n = FqName::resolve("d:p:red", &ProjectName::default_project()).unwrap();
        assert_eq!(n.to_string(), "d:p:red");
    }

    #[test]
    fn two_part_name_is_rejected() {
        assert!(FqName::resolve("p:red", &ProjectName::default_project()).is_err());
    }

    #[test]
    fn name_with_space_is_rejected() {
        assert!(check_component("a b").unwrap_err().contains("' '"));
    }

    #[test]
    fn vni_bounds() {
        assert!(Vni::new(0).is_err());
        assert!(Vni::new(1).is_ok());
        assert!(Vni::new(16_777_215).is_ok());
        assert!(Vni::new(16_777_216).is_err());
    }

    #[test]
    fn fq_name_round_trips_through_json() {
        let n: FqName = "default-domain:admin:red".parse().unwrap();
        let j = serde_json::to_string(&n).unwrap();
        assert_eq!(j, "\"default-domain:admin:red\"");
        assert_eq!(serde_json::from_str::<FqName>(&j).unwrap(), n);
    }
}
