//! The hosts' configuration file, `/etc/tessera/tessera.toml` (another with
//! `--config-file` or `TESSERA_CONFIG_FILE`): every flag of every command
//! settable in one place, by its long name, and by the environment.
//!
//! ```toml
//! [global]                               # the flags every command takes
//! controller = "https://10.0.0.1:8082"
//! ca = "/etc/tessera/pki/ca.pem"
//! log-format = "json"
//!
//! [controller]                           # the flags of `tessera controller`
//! listen = "0.0.0.0:8082"
//! data-dir = "/var/lib/tessera"
//!
//! [agent]                                # the flags of `tessera agent`
//! host = "h1"
//! ```
//!
//! Precedence: a flag, then its environment variable, then the file, then
//! the built-in default. Every flag has a variable: the one its help names,
//! else `TESSERA_<FLAG>` for a flag every command takes and
//! `TESSERA_<COMMAND>_<FLAG>` for a command's (dashes as underscores, upper
//! case: `TESSERA_AGENT_UNDERLAY_IP`). The file's values become the flags'
//! defaults, after each was checked by the flag's own parser: an unknown
//! section or key, a value of the wrong kind or one the flag refuses is an
//! error naming the file, the section and the key. A file that others may
//! write, or that holds a token others may read, is refused: root daemons
//! read it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The section of the flags every command takes (they may also be
/// top-level keys).
const GLOBAL: &str = "global";

/// The file read when none is named, if it exists.
pub const DEFAULT_PATH: &str = "/etc/tessera/tessera.toml";

/// A configuration file as read.
pub struct ConfigFile {
    pub path: PathBuf,
    table: toml::Table,
}

/// The file `argv` or the environment names, else [`DEFAULT_PATH`] when it
/// exists; `None` when there is none. A named file must exist.
pub fn load(argv: &[OsString]) -> anyhow::Result<Option<ConfigFile>> {
    let named = named_path(argv).or_else(|| std::env::var_os("TESSERA_CONFIG_FILE").map(PathBuf::from));
    let path = match named {
        Some(p) => p,
        None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
        None => return Ok(None),
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    let mode = std::fs::metadata(&path)?.permissions().mode();
    if mode & 0o022 != 0 {
        bail!(
            "the configuration file {} may be written by others (mode {:o}): chmod go-w {}",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("the configuration file {} is not valid TOML", path.display()))?;
    if mode & 0o077 != 0 && holds_token(&table) {
        bail!(
            "the configuration file {} holds a token but others may read it (mode {:o}): chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(Some(ConfigFile { path, table }))
}

fn holds_token(table: &toml::Table) -> bool {
    table.iter().any(|(k, v)| k == "token" || v.as_table().is_some_and(holds_token))
}

/// `--config-file PATH` or `--config-file=PATH` in `argv`.
fn named_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        let a = a.to_str()?;
        if a == "--" {
            return None;
        }
        if a == "--config-file" {
            return args.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config-file=") {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// Takes away Tessera's variables that are set but empty: an empty
/// variable is as if unset, so that it never hides the file's value (a
/// managed Docker plugin passes every variable it declares, set or not).
/// Called first thing, before any thread is started.
pub fn drop_empty_variables() {
    let empty: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(k, v)| v.is_empty() && k.to_str().is_some_and(|k| k.starts_with("TESSERA_") || k == "DOCKER_HOST"))
        .map(|(k, _)| k)
        .collect();
    for k in empty {
        std::env::remove_var(k);
    }
}

/// The variable of `arg`: its own, else the one named after it.
fn env_name(command: Option<&str>, arg: &clap::Arg) -> Option<String> {
    let long = arg.get_long()?;
    let name = match command {
        Some(c) => format!("TESSERA_{c}_{long}"),
        None => format!("TESSERA_{long}"),
    };
    Some(name.replace('-', "_").to_ascii_uppercase())
}

/// Whether `arg` is one a file or a variable may set (a flag with a long
/// name, not help or version).
fn settable(arg: &clap::Arg) -> bool {
    arg.get_long().is_some()
        && !matches!(
            arg.get_action(),
            clap::ArgAction::Help | clap::ArgAction::HelpShort | clap::ArgAction::HelpLong | clap::ArgAction::Version
        )
}

/// Gives every settable flag of `cli` and of its commands a variable.
pub fn with_env(mut cli: clap::Command) -> clap::Command {
    let globals: Vec<(clap::Id, String)> = cli
        .get_arguments()
        .filter(|a| settable(a) && a.get_env().is_none())
        .filter_map(|a| Some((a.get_id().clone(), env_name(None, a)?)))
        .collect();
    for (id, env) in globals {
        cli = cli.mut_arg(id, |a| a.env(env));
    }
    let commands: Vec<String> = cli.get_subcommands().map(|s| s.get_name().to_owned()).collect();
    for name in commands {
        cli = cli.mut_subcommand(name.clone(), |sub| command_env(sub, &name));
    }
    cli
}

/// Gives every settable flag of `sub` (a command's) and of its own
/// commands the variable named after `command`: `tessera controller init
/// --data-dir` reads what `tessera controller --data-dir` reads.
fn command_env(mut sub: clap::Command, command: &str) -> clap::Command {
    let own: Vec<(clap::Id, String)> = sub
        .get_arguments()
        .filter(|a| settable(a) && !a.is_global_set() && a.get_env().is_none())
        .filter_map(|a| Some((a.get_id().clone(), env_name(Some(command), a)?)))
        .collect();
    for (id, env) in own {
        sub = sub.mut_arg(id, |a| a.env(env));
    }
    let nested: Vec<String> = sub.get_subcommands().map(|s| s.get_name().to_owned()).collect();
    for name in nested {
        sub = sub.mut_subcommand(name, |s| command_env(s, command));
    }
    sub
}

/// A flag's value as the file gives it, as the strings a command line
/// would.
fn strings(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Float(f) => Some(vec![f.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(items) => items.iter().map(|v| strings(v).filter(|s| s.len() == 1).map(|mut s| s.remove(0))).collect(),
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

/// What the file sets: per command (`None`: the flags every command takes),
/// per flag, the values.
type Settings = BTreeMap<Option<String>, BTreeMap<String, Vec<String>>>;

impl ConfigFile {
    /// Checks every key and value of the file against `cli` (see the module
    /// docs) and returns them.
    fn settings(&self, cli: &clap::Command) -> anyhow::Result<Settings> {
        let mut out = Settings::new();
        for (key, value) in &self.table {
            match value {
                // The flags every command takes, also in a section of their
                // own (where `controller`, the URL, does not clash with the
                // `[controller]` section).
                toml::Value::Table(section) if key == GLOBAL => {
                    for (flag, value) in section {
                        let values = self.check(cli, None, flag, value)?;
                        out.entry(None).or_default().insert(flag.clone(), values);
                    }
                }
                toml::Value::Table(section) => {
                    let Some(sub) = cli.get_subcommands().find(|s| s.get_name() == key) else {
                        bail!(
                            "{}: unknown section [{key}]: a section is a command (controller, agent, docker-plugin, ...)",
                            self.path.display()
                        );
                    };
                    for (flag, value) in section {
                        let values = self.check(sub, Some(key), flag, value)?;
                        out.entry(Some(key.clone())).or_default().insert(flag.clone(), values);
                    }
                }
                _ => {
                    let values = self.check(cli, None, key, value)?;
                    out.entry(None).or_default().insert(key.clone(), values);
                }
            }
        }
        Ok(out)
    }

    /// Checks the file's `flag = value` of `command` (in `section`).
    fn check(
        &self,
        command: &clap::Command,
        section: Option<&str>,
        flag: &str,
        value: &toml::Value,
    ) -> anyhow::Result<Vec<String>> {
        let at = match section {
            Some(s) => format!("{}: [{s}] {flag}", self.path.display()),
            None => format!("{}: {flag}", self.path.display()),
        };
        // The file is chosen before it is read: naming another one here
        // would be accepted and do nothing.
        if flag == "config-file" {
            bail!("{at}: a configuration file cannot name another (give --config-file or TESSERA_CONFIG_FILE)");
        }
        let arg = command
            .get_arguments()
            .find(|a| settable(a) && a.get_long() == Some(flag) && (section.is_none() || !a.is_global_set()))
            .with_context(|| {
                let known: Vec<&str> = command
                    .get_arguments()
                    .filter(|a| settable(a) && (section.is_none() || !a.is_global_set()))
                    .filter_map(|a| a.get_long())
                    .collect();
                format!("{at}: unknown key; {} takes {}", section.unwrap_or("every command"), known.join(", "))
            })?;
        if matches!(arg.get_action(), clap::ArgAction::SetTrue | clap::ArgAction::SetFalse) {
            let on = value.as_bool().with_context(|| format!("{at}: must be true or false"))?;
            return Ok(vec![on.to_string()]);
        }
        let values = strings(value).with_context(|| format!("{at}: must be a string, a number, a boolean or a list of them"))?;
        let many = matches!(arg.get_action(), clap::ArgAction::Append) || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
        if values.len() != 1 && !many {
            bail!("{at}: takes one value, not a list");
        }
        // Each value through the flag's own parser, as if it were given alone.
        let probe = clap::Arg::new("value").long(flag.to_owned()).value_parser(arg.get_value_parser().clone()).num_args(1);
        let probe = match arg.get_value_names() {
            Some(names) => probe.value_names(names.iter().cloned()),
            None => probe,
        };
        let probe = clap::Command::new("tessera").no_binary_name(true).disable_help_flag(true).arg(probe);
        for v in &values {
            let argv = [OsString::from(format!("--{flag}")), OsString::from(v)];
            probe.clone().try_get_matches_from(argv).map_err(|e| {
                let message = e.to_string();
                let first = message.lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
                anyhow::anyhow!("{at}: {first}")
            })?;
        }
        Ok(values)
    }

    /// `cli` with the file's values as its flags' defaults.
    pub fn apply(&self, mut cli: clap::Command) -> anyhow::Result<clap::Command> {
        for (section, flags) in self.settings(&cli)? {
            for (flag, values) in flags {
                let id = id_of(&cli, section.as_deref(), &flag);
                // A required flag the file sets is no longer required on
                // the command line (clap checks presence before defaults).
                let set = move |a: clap::Arg| a.default_values(values.clone()).required(false);
                cli = match &section {
                    None => cli.mut_arg(id, set),
                    // A command's section also sets its own commands' flag
                    // of that name (`[controller] data-dir` for
                    // `tessera controller init`).
                    Some(s) => cli.mut_subcommand(s.clone(), |mut sub| {
                        let nested: Vec<(String, clap::Id)> = sub
                            .get_subcommands()
                            .filter_map(|n| {
                                let arg = n.get_arguments().find(|a| a.get_long() == Some(flag.as_str()))?;
                                Some((n.get_name().to_owned(), arg.get_id().clone()))
                            })
                            .collect();
                        for (name, nested_id) in nested {
                            sub = sub.mut_subcommand(name, |n| n.mut_arg(nested_id, set.clone()));
                        }
                        sub.mut_arg(id, set)
                    }),
                };
            }
        }
        Ok(cli)
    }
}

fn id_of(cli: &clap::Command, section: Option<&str>, flag: &str) -> clap::Id {
    let command = match section {
        Some(s) => cli.find_subcommand(s).unwrap_or(cli),
        None => cli,
    };
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(flag))
        .map(|a| a.get_id().clone())
        .unwrap_or_else(|| clap::Id::from(flag.to_owned()))
}

/// One flag's effective value and where it comes from (`tessera config show`).
#[derive(Debug, serde::Serialize)]
pub struct Effective {
    pub key: String,
    pub value: Option<String>,
    pub source: String,
}

/// The effective value of every settable flag of `section` (the flags every
/// command takes when `None`), from the environment, `file` and `cli`'s
/// defaults (`cli` with its variables, before the file was applied).
pub fn effective(cli: &clap::Command, file: Option<&ConfigFile>, section: Option<&str>) -> anyhow::Result<Vec<Effective>> {
    let command = match section {
        Some(s) => cli.find_subcommand(s).with_context(|| format!("no command {s}"))?,
        None => cli,
    };
    let settings = match file {
        Some(f) => f.settings(cli)?,
        None => Settings::new(),
    };
    let from_file = settings.get(&section.map(str::to_owned));
    let mut out = Vec::new();
    for arg in command.get_arguments().filter(|a| settable(a) && (section.is_none() || !a.is_global_set())) {
        let key = arg.get_long().unwrap_or_default().to_owned();
        let secret = key == "token";
        let show = |v: String| if secret { "(set)".to_owned() } else { v };
        let env = arg.get_env().and_then(|name| Some((name.to_string_lossy().into_owned(), std::env::var(name).ok()?)));
        let (value, source) = if let Some((name, v)) = env {
            (Some(show(v)), format!("environment {name}"))
        } else if let Some(values) = from_file.and_then(|f| f.get(&key)) {
            (Some(show(values.join(","))), format!("file {}", file.map(|f| f.path.display().to_string()).unwrap_or_default()))
        } else if !arg.get_default_values().is_empty() {
            let d: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            (Some(d.join(",")), "default".to_owned())
        } else {
            (None, "unset".to_owned())
        };
        out.push(Effective { key, value, source });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_named_by_flag_in_either_form() {
        let argv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(named_path(&argv(&["tessera", "agent", "--config-file", "/x.toml"])), Some(PathBuf::from("/x.toml")));
        assert_eq!(named_path(&argv(&["tessera", "--config-file=/y.toml", "agent"])), Some(PathBuf::from("/y.toml")));
        assert_eq!(named_path(&argv(&["tessera", "attach", "--", "--config-file", "/z"])), None);
    }

    #[test]
    fn variables_are_named_after_the_command_and_the_flag() {
        let arg = clap::Arg::new("underlay_ip").long("underlay-ip");
        assert_eq!(env_name(Some("agent"), &arg).as_deref(), Some("TESSERA_AGENT_UNDERLAY_IP"));
        assert_eq!(env_name(Some("docker-plugin"), &arg).as_deref(), Some("TESSERA_DOCKER_PLUGIN_UNDERLAY_IP"));
        assert_eq!(env_name(None, &clap::Arg::new("json").long("json")).as_deref(), Some("TESSERA_JSON"));
    }
}
