//! The command line: clap definitions, settings, and the mapping of errors to exit codes.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::cmd;
use crate::config::{Flags, Settings};
use crate::error::{Exit, UserError};
use crate::logging::init as init_logging;

/// Share cached GitHub API responses between CI runners.
#[derive(Debug, Parser)]
#[command(name = "peercache", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Settings flags every subcommand accepts.
#[derive(Debug, Args)]
struct GlobalArgs {
    /// State dir (identity, pid, logs, peercache.yml) [env: PEERCACHE_HOME]
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<String>,
    /// Cache dir [env: PEERCACHE_CACHE_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<String>,
    /// Upstream API base, e.g. https://HOST/api/v3 for GitHub Enterprise Server [env: PEERCACHE_API_URL]
    #[arg(long, global = true, value_name = "URL")]
    api_url: Option<String>,
    /// Log filter, e.g. info or peercache=debug [env: PEERCACHE_LOG]
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the state dir and identity, pick the p2p port, print PEERCACHE_* lines
    Init(cmd::init::InitArgs),
    /// GET an API endpoint through the cache, like `gh api`
    Fetch(cmd::fetch::FetchArgs),
    /// Run the p2p node and the local API (foreground, or detached with --daemon)
    Serve(cmd::serve::ServeArgs),
    /// Stop the daemon named in $PEERCACHE_HOME/serve.json and wait for it to exit
    Stop,
    /// Peers and cache figures of the running daemon (--json, or --markdown for a job summary)
    Status(cmd::status::StatusArgs),
    /// Publish the running daemon's record (peer id, dialable addresses) to each registry
    Register(cmd::register::RegisterArgs),
    /// List the live peers of the registries and the bootstrap setting
    Discover(cmd::discover::DiscoverArgs),
    /// Print a new swarm secret (32 random bytes, base64) for PEERCACHE_SECRET
    Secret,
}

/// Parses the command line, runs the subcommand and returns its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_error(err),
    };
    let short_lived = matches!(cli.command, Command::Fetch(_));
    if matches!(cli.command, Command::Serve(_)) {
        // A daemon frees and reuses memory for days; the start-up arena only serves the
        // commands that end in a moment.
        crate::alloc::close_arena();
    }
    let code = match run(cli) {
        Ok(exit) => exit as u8,
        Err(err) => report(&err),
    };
    if short_lived {
        exit_now(code);
    }
    ExitCode::from(code)
}

/// Ends the process at once with `code`, once stdout is flushed.
///
/// For `fetch`, whose output is written and whose state is all dropped by now: the exit-time
/// handlers have nothing to do for it but cost time: mimalloc returns its freed pages to the
/// kernel (one `madvise` each, seven on a local hit) just before the kernel frees them all
/// anyway, and the main thread's signal stack is taken down. stderr is unbuffered.
fn exit_now(code: u8) -> ! {
    let _ = std::io::Write::flush(&mut std::io::stdout().lock());
    // SAFETY: `_exit` only ends the process; nothing of this process runs after it.
    unsafe { libc::_exit(i32::from(code)) }
}

fn run(cli: Cli) -> anyhow::Result<Exit> {
    let mut flags = Flags {
        home: cli.global.home,
        cache_dir: cli.global.cache_dir,
        api_url: cli.global.api_url,
        log: cli.global.log,
        ..Flags::default()
    };
    match cli.command {
        // Reads no settings: it must work while a refused secret is still set.
        Command::Secret => cmd::secret::run(),
        Command::Init(args) => {
            flags.port = args.port.clone();
            let settings = Settings::load(&flags)?;
            init_logging(&settings.log, false);
            cmd::init::run(&settings, args)
        }
        Command::Fetch(args) => {
            flags.ttl = args.ttl_flag()?;
            let settings = Settings::load(&flags)?;
            init_logging(&settings.log, false);
            cmd::fetch::run(&settings, args)
        }
        Command::Serve(args) => {
            flags.port = args.port.clone();
            flags.bootstrap = args.bootstrap.clone();
            flags.ttl = args.ttl.clone();
            flags.registry = args.registry.clone();
            flags.mdns = args.mdns.clone();
            flags.scope = args.scope.clone();
            flags.hub = args.hub.then(|| "true".to_string());
            flags.external_addrs =
                (!args.external_addr.is_empty()).then(|| args.external_addr.join(","));
            let settings = Settings::load(&flags)?;
            // A daemon's log is read later: every line carries its time.
            init_logging(&settings.log, !args.daemon);
            cmd::serve::run(&settings, args)
        }
        Command::Stop => {
            let settings = Settings::load(&flags)?;
            init_logging(&settings.log, false);
            cmd::stop::run(&settings)
        }
        Command::Status(args) => {
            let settings = Settings::load(&flags)?;
            init_logging(&settings.log, false);
            cmd::status::run(&settings, args)
        }
        Command::Register(args) => {
            flags.registry = args.registry.clone();
            let settings = Settings::load(&flags)?;
            init_logging(&settings.log, false);
            cmd::register::run(&settings, args)
        }
        Command::Discover(args) => {
            flags.registry = args.registry.clone();
            let settings = Settings::load(&flags)?;
            init_logging(&settings.log, false);
            cmd::discover::run(&settings, args)
        }
    }
}

/// Prints an error as one line and picks its exit code.
fn report(err: &anyhow::Error) -> u8 {
    if let Some(user) = err.downcast_ref::<UserError>() {
        eprintln!("peercache: {}", crate::logging::defuse(&user.message));
        return user.exit as u8;
    }
    let text = format!("{err:#}").replace('\n', " ");
    eprintln!("peercache: error: {}", crate::logging::defuse(&text));
    Exit::Http as u8
}

/// clap's errors are several lines; the contract wants one line that names the problem and fix.
fn clap_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return ExitCode::from(
            if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                2
            } else {
                0
            },
        );
    }
    let rendered = err.render().to_string();
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    let tip = lines
        .find(|l| l.starts_with("tip:"))
        .map(|t| format!(" ({t})"))
        .unwrap_or_default();
    eprintln!("peercache: {first}{tip}; see 'peercache --help'");
    ExitCode::from(Exit::Usage as u8)
}
