//! `tessera`: one binary for the controller, the agent, the plugins and the CLI.
#![forbid(unsafe_code)]

mod client_config;
mod commands;
mod config_file;
mod table;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Exit codes scripts can rely on.
pub mod exit {
    /// The controller refused the request (the error is on stderr).
    pub const REFUSED: u8 = 1;
    /// Bad command-line usage.
    pub const USAGE: u8 = 2;
    /// No controller could be reached, or a call that is not idempotent
    /// may have reached one that then failed (it was not replayed).
    pub const UNREACHABLE: u8 = 3;
}

#[derive(Parser)]
#[command(name = "tessera", version, about = "Overlay networks for containers")]
pub struct Cli {
    /// The controller's URL; several controllers sharing one store as URLs
    /// separated by commas (or one name that resolves to several
    /// addresses): calls go on to the next when one is down.
    #[arg(long, global = true, env = "TESSERA_CONTROLLER", default_value = "http://127.0.0.1:8082")]
    controller: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The fabric's CA certificate, to verify an `https://` controller.
    #[arg(long, global = true, env = "TESSERA_CA")]
    ca: Option<std::path::PathBuf>,
    /// A client certificate (`tessera pki`): an agent's or plugin's host
    /// certificate, or an administrator's.
    #[arg(long, global = true, env = "TESSERA_CERT", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// The key of `--cert`.
    #[arg(long, global = true, env = "TESSERA_KEY", requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// A bearer token (`tessera token create`).
    #[arg(long, global = true, env = "TESSERA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How log lines are written to standard error: `text` for people
    /// (coloured only on a terminal), `json` (one object per line) for log
    /// shippers. Which lines: `TESSERA_LOG` (`info`, `warn,tessera_agent=debug`, ...).
    #[arg(long, global = true, env = "TESSERA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Which log lines: a level, and levels per module (`info`,
    /// `warn,tessera_agent=debug`); the servers log `info` by default, the
    /// CLI and the demo `warn`.
    #[arg(long, global = true, env = "TESSERA_LOG", value_parser = parse_log_filter)]
    log: Option<String>,
    /// A configuration file with `controller`, `ca`, `cert`, `key` or
    /// `token` (TOML); flags and the environment win over it. Without it,
    /// `~/.config/tessera/client.toml` when it exists.
    #[arg(long, global = true, env = "TESSERA_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// The hosts' configuration file: any flag of any command by its long
    /// name, a section per command (`[agent]`); flags and the environment
    /// win over it. Without it, /etc/tessera/tessera.toml when it exists.
    #[arg(long, global = true, env = "TESSERA_CONFIG_FILE")]
    config_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// See `--log-format`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `--log`: a filter `tracing` reads (`info`, `warn,tessera_agent=debug`).
fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s).map(|_| s.to_string()).map_err(|e| format!("not a log filter: {e}"))
}

/// Logs to standard error at `levels` (`--log`, else `default_level`), in
/// `format`: colour escapes only when standard error is a terminal.
fn init_logging(format: LogFormat, levels: Option<&str>, default_level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::new(levels.unwrap_or(default_level));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

impl Cli {
    /// The command line, then the configuration file for what neither a
    /// flag nor the environment gave.
    fn parse_with_config() -> anyhow::Result<(Cli, Option<config_file::ConfigFile>)> {
        config_file::drop_empty_variables();
        let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let file = config_file::load(&argv)?;
        let mut command = config_file::with_env(Cli::command());
        if let Some(f) = &file {
            command = f.apply(command)?;
        }
        let matches = command.try_get_matches_from(&argv).unwrap_or_else(|e| e.exit());
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let given = |id: &str| matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
        let Some(path) = client_config::config_path(cli.config.as_deref()) else { return Ok((cli, file)) };
        let client = client_config::load(&path)?;
        if !given("controller") {
            if let Some(c) = client.controller {
                cli.controller = c;
            }
        }
        if !given("ca") && client.ca.is_some() {
            cli.ca = client.ca;
        }
        // A certificate or a token from the command line or the
        // environment stands alone: the file does not add the other.
        if !given("cert") && !given("key") && !given("token") {
            cli.cert = cli.cert.or(client.cert);
            cli.key = cli.key.or(client.key);
            cli.token = cli.token.or(client.token);
        }
        Ok((cli, file))
    }

    fn credentials(&self) -> tessera_api::auth::Credentials {
        tessera_api::auth::Credentials {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            token: self.token.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: the REST API and the source of truth.
    Controller(commands::controller::Args),
    /// Floating IPs: add, list, show, associate, disassociate, delete.
    #[command(subcommand, name = "floating-ip")]
    FloatingIp(commands::floating_ip::Cmd),
    /// Service templates: the interfaces and mode of a kind of network function.
    #[command(subcommand, name = "service-template")]
    ServiceTemplate(commands::service::TemplateCmd),
    /// Services: network functions between networks, their instances and health.
    #[command(subcommand)]
    Service(commands::service::Cmd),
    /// Flow records: who talked to whom, how much, and what happened to it.
    #[command(subcommand)]
    Flow(commands::flow::Cmd),
    /// Networks: add, show, list, update, delete.
    #[command(subcommand)]
    Network(commands::network::Cmd),
    /// The fabric at a glance: hosts, endpoints, networks, policies and the traffic between networks.
    Topology(commands::topology::Args),
    /// Policies: ordered rules connecting networks.
    #[command(subcommand)]
    Policy(commands::policy::Cmd),
    /// Endpoints (ports) of containers in networks.
    #[command(subcommand)]
    Endpoint(commands::endpoint::Cmd),
    /// Hosts running an agent.
    #[command(subcommand)]
    Host(commands::host::Cmd),
    /// Projects (DOMAIN:PROJECT) that own networks and policies.
    #[command(subcommand)]
    Project(commands::project::Cmd),
    /// Build a demo fabric on this machine and play the seeds' scenario.
    Demo(commands::demo::Args),
    /// Run the host agent: reconcile this host's data plane to the controller's intent.
    Agent(commands::agent::AgentArgs),
    /// Run Docker's network and IPAM driver for this host (`docker network create -d tessera`).
    DockerPlugin(commands::docker_plugin::Args),
    /// Put a running container or network namespace into a network.
    Attach(commands::agent::AttachArgs),
    /// Take a container or network namespace out of a network (or of all).
    Detach(commands::agent::DetachArgs),
    /// The host's interface table.
    #[command(subcommand)]
    Vif(commands::agent::VifCmd),
    /// This host's agent: its controller, whether it holds its data plane (and why), its last error.
    Status(commands::agent::StatusArgs),
    /// Check what this host needs for Tessera (kernel features, underlay MTU, agent, controller, other hosts), each failure with its fix.
    Doctor(commands::doctor::Args),
    /// Remove everything Tessera made in this host's kernel (links, routing rules and routes, nftables tables), once the agent is stopped.
    Purge(commands::purge::Args),
    /// The fabric's certificates: a CA, the controller's, an admin's, one per host.
    #[command(subcommand)]
    Pki(commands::pki::Cmd),
    /// Bearer tokens for people and automation (admin only).
    #[command(subcommand)]
    Token(commands::token::Cmd),
    /// The controllers' store: `migrate` a stopped fabric between redb and etcd.
    #[command(subcommand)]
    Store(commands::store::Cmd),
    /// The CNI plugin: install it for a runtime (the runtime then runs `tessera` with CNI_COMMAND set).
    #[command(subcommand)]
    Cni(commands::cni::Cmd),
    /// The configuration: `show` what each flag of a command is set to, and where that comes from.
    #[command(subcommand)]
    Config(commands::config::Cmd),
    /// Print the completion script of a shell (bash, zsh, fish, elvish, powershell) for this CLI.
    Completions(commands::docs::CompletionsArgs),
    /// Write the manual pages of every command (`tessera.1`, `tessera-network-add.1`, ...) into a directory.
    #[command(name = "man-pages")]
    ManPages(commands::docs::ManPagesArgs),
}

fn main() -> ExitCode {
    // Runtimes execute the plugin with the CNI environment, not with arguments.
    if std::env::var_os("CNI_COMMAND").is_some() {
        return tessera_cni::plugin::plugin_main();
    }
    let (cli, file) = match Cli::parse_with_config() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(exit::USAGE);
        }
    };
    // Servers log their work; the demo and the CLI only warn, their output is for people.
    let default_level = match cli.command {
        Command::Controller(commands::controller::Args { action: None, .. }) | Command::Agent(_) | Command::DockerPlugin(_) => {
            "info"
        }
        _ => "warn",
    };
    init_logging(cli.log_format, cli.log.as_deref(), default_level);
    // What documents the CLI needs neither a runtime nor a controller; the
    // definition with every flag's variable, as parsing used it.
    let definition = || config_file::with_env(Cli::command());
    match &cli.command {
        Command::Completions(a) => return report(commands::docs::completions(definition(), a)),
        Command::ManPages(a) => return report(commands::docs::man_pages(definition(), a)),
        Command::Config(c) => return report(commands::config::run(&definition(), file.as_ref(), c, cli.json)),
        _ => {}
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Commands that never call a controller do not need the credentials
    // to exist (`pki init` makes them).
    let local = matches!(
        cli.command,
        Command::Pki(_)
            | Command::Purge(_)
            | Command::Store(_)
            | Command::Demo(_)
            | Command::Controller(commands::controller::Args { action: None | Some(commands::controller::Action::Init(_)), .. })
    );
    let credentials = if local { tessera_api::auth::Credentials::default() } else { cli.credentials() };
    let client = match tessera_api::ControllerClient::with_credentials(&cli.controller, &credentials) {
        Ok(c) => c.without_timeout(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let ctx = commands::Ctx { client, json: cli.json };
    let result = rt.block_on(async {
        match cli.command {
            Command::Controller(a) => match a.action {
                Some(commands::controller::Action::Status) => commands::controller_status::run(&ctx).await,
                Some(commands::controller::Action::Init(store)) => commands::controller::init(*store).await,
                None => commands::controller::run(a).await,
            },
            Command::Network(c) => commands::network::run(&ctx, c).await,
            Command::Topology(a) => commands::topology::run(&ctx, a).await,
            Command::FloatingIp(c) => commands::floating_ip::run(&ctx, c).await,
            Command::Flow(c) => commands::flow::run(&ctx, c).await,
            Command::ServiceTemplate(c) => commands::service::run_templates(&ctx, c).await,
            Command::Service(c) => commands::service::run(&ctx, c).await,
            Command::Policy(c) => commands::policy::run(&ctx, c).await,
            Command::Endpoint(c) => commands::endpoint::run(&ctx, c).await,
            Command::Host(c) => commands::host::run(&ctx, c).await,
            Command::Project(c) => commands::project::run(&ctx, c).await,
            Command::Demo(a) => tokio::task::spawn_blocking(move || commands::demo::run(a))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("demo crashed: {e}"))),
            Command::Agent(a) => commands::agent::run_agent(&cli.controller, &credentials, a).await,
            Command::DockerPlugin(a) => commands::docker_plugin::run(&cli.controller, &credentials, a).await,
            Command::Pki(c) => commands::pki::run(&ctx, c),
            Command::Token(c) => commands::token::run(&ctx, c).await,
            Command::Store(c) => commands::store::run(c).await,
            Command::Attach(a) => commands::agent::attach(&ctx, a).await,
            Command::Detach(a) => commands::agent::detach(&ctx, a).await,
            Command::Vif(c) => commands::agent::vif(&ctx, c).await,
            Command::Status(a) => commands::agent::status(&ctx, a).await,
            Command::Doctor(a) => commands::doctor::run(&ctx, a).await,
            Command::Purge(a) => commands::purge::run(&ctx, a).await,
            Command::Cni(c) => commands::cni::run(&ctx, c).await,
            Command::Completions(_) | Command::ManPages(_) | Command::Config(_) => Ok(()),
        }
    });
    report(result)
}

/// The exit code of a command's `result`, its error printed.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = match e.downcast_ref::<tessera_api::ClientError>() {
                Some(tessera_api::ClientError::Unreachable { .. } | tessera_api::ClientError::NotReplayed { .. }) => {
                    exit::UNREACHABLE
                }
                Some(_) => exit::REFUSED,
                None => exit::REFUSED,
            };
            ExitCode::from(code)
        }
    }
}
