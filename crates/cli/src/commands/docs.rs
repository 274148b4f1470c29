//! Documents generated from the CLI's own definition, so they never drift
//! from it: shell completion scripts (`clap_complete`) and manual pages
//! (`clap_mangen`), one page per command.

use std::path::{Path, PathBuf};

use anyhow::Context;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(clap::Args)]
pub struct ManPagesArgs {
    /// The directory to write the pages into (made if missing), e.g. `/usr/share/man/man1`.
    #[arg(long)]
    dir: PathBuf,
}

/// Prints the completion script of `args.shell` for `cli`.
pub fn completions(mut cli: clap::Command, args: &CompletionsArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cli, "tessera", &mut script);
    match std::io::stdout().write_all(&script) {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other.context("cannot write the completion script")?),
    }
}

/// Writes a page for `cli` and for each of its commands, at every depth.
pub fn man_pages(cli: clap::Command, args: &ManPagesArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot make {}", args.dir.display()))?;
    let written = write_pages(&cli, "tessera", &args.dir)?;
    eprintln!("wrote {written} manual pages into {}", args.dir.display());
    Ok(())
}

fn write_pages(cmd: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<usize> {
    let page = cmd.clone().name(name.to_owned()).bin_name(name.replace('-', " "));
    let mut text = Vec::new();
    clap_mangen::Man::new(page).render(&mut text)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    let mut written = 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written += write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(written)
}
