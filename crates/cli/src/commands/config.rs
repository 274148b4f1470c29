//! `tessera config show`: the effective configuration of a command and
//! where each value comes from (see `config_file`).

use crate::config_file::{self, ConfigFile};
use crate::table::Table;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Every flag of a command (or, without one, the flags every command
    /// takes): its effective value and where it comes from (environment,
    /// configuration file, default).
    Show {
        /// The command: controller, agent, docker-plugin, ...
        command: Option<String>,
    },
}

/// Runs `cmd` against `cli` (with its variables) and `file`.
pub fn run(cli: &clap::Command, file: Option<&ConfigFile>, cmd: &Cmd, json: bool) -> anyhow::Result<()> {
    let Cmd::Show { command } = cmd;
    let rows = config_file::effective(cli, file, command.as_deref())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    match file {
        Some(f) => println!("configuration file: {}", f.path.display()),
        None => println!("configuration file: none ({} does not exist)", config_file::DEFAULT_PATH),
    }
    let mut t = Table::new(&["KEY", "VALUE", "SOURCE"]);
    for r in rows {
        t.row(vec![r.key, r.value.unwrap_or_else(|| "-".into()), r.source]);
    }
    print!("{}", t.render());
    Ok(())
}
