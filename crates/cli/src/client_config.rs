//! The CLI's configuration file: where the controller is and which
//! credential to present, for people who do not want to repeat `--ca`,
//! `--cert`, `--key` or `--token` (or export them) on every command.
//!
//! `--config FILE` (or `TESSERA_CONFIG`), else `$XDG_CONFIG_HOME/tessera/
//! client.toml` (`~/.config/tessera/client.toml`) when it exists. A flag
//! wins over the environment, which wins over the file. A file that holds a
//! token must not be readable by others (as ssh insists for its keys).
//!
//! ```toml
//! controller = "https://172.16.0.1:8082"   # or several: "https://c1:8082,https://c2:8082"
//! ca = "/etc/tessera/pki/ca.pem"
//! token = "…"            # or cert = "…" and key = "…"
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// What the file may say; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub controller: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub token: Option<String>,
}

/// The file to read: the one named, else the user's when it exists.
pub fn config_path(named: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = named {
        return Some(p.to_path_buf());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    let path = base.join("tessera").join("client.toml");
    path.exists().then_some(path)
}

/// Reads and checks `path`: TOML with the keys above (an unknown key is an
/// error naming it), relative certificate paths taken from the file's
/// directory, and no token in a file others may read.
pub fn load(path: &Path) -> anyhow::Result<ClientConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the configuration {}", path.display()))?;
    let mut config: ClientConfig =
        toml::from_str(&text).with_context(|| format!("the configuration {} is not valid", path.display()))?;
    if config.token.is_some() {
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "the configuration {} holds a token but others may read it (mode {:o}): chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    for p in [&mut config.ca, &mut config.cert, &mut config.key].into_iter().flatten() {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("client.toml");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_file_gives_the_controller_and_credentials_with_paths_from_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "controller = \"https://c:8082\"\nca = \"ca.pem\"\ncert = \"/abs/admin.pem\"\n", 0o644);
        let c = load(&p).unwrap();
        assert_eq!(c.controller.as_deref(), Some("https://c:8082"));
        assert_eq!(c.ca, Some(dir.path().join("ca.pem")));
        assert_eq!(c.cert, Some(PathBuf::from("/abs/admin.pem")));
    }

    #[test]
    fn a_token_in_a_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "token = \"secret\"\n", 0o644);
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let p = write(dir.path(), "token = \"secret\"\n", 0o600);
        assert_eq!(load(&p).unwrap().token.as_deref(), Some("secret"));
    }

    #[test]
    fn an_unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "tokn = \"x\"\n", 0o600);
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(e.contains("tokn"), "{e}");
    }
}
