//! `fakehub` binary: the fake GitHub for benchmark and CI scripts.
//!
//! Prints exactly one line, `FAKEHUB_URL=http://127.0.0.1:PORT`, on stdout
//! once it is listening (scripts read it to find the port), logs nothing else
//! there, and runs until SIGTERM or SIGINT. It is driven at runtime through
//! the control API under `/_fakehub/`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use fakehub::{FakeHub, Options, generate_resources};

/// A loopback stand-in for the GitHub REST API.
#[derive(Debug, Parser)]
#[command(name = "fakehub", version, about)]
struct Args {
    /// Address to listen on (loopback only; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Delay before answering every API request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Number of repositories /repos/octo/swarm/contents/r{0..N} to generate.
    #[arg(long, default_value_t = 0)]
    generate: usize,
    /// Body size of each generated repository, in bytes.
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// Requests per rate-limit window for each token.
    #[arg(long, default_value_t = 5000)]
    quota: u64,
    /// Rate-limit window length, in seconds.
    #[arg(long, default_value_t = 3600)]
    window_secs: u64,
    /// Keep at most this many request records (oldest dropped); default: all.
    #[arg(long)]
    max_records: Option<usize>,
    /// Give OWNER/REPO live issues and issue comments (repeatable).
    #[arg(long = "repo", value_name = "OWNER/REPO")]
    repos: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fakehub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    // Checked here too (the library also refuses) so the message names the flag.
    if !args.listen.ip().is_loopback() {
        bail!(
            "--listen {}: only loopback addresses (127.0.0.0/8 or ::1) are allowed; \
             fakehub is a test server and must not be reachable from other hosts",
            args.listen
        );
    }
    let hub = FakeHub::try_start_with(Options {
        latency: Duration::from_millis(args.latency_ms),
        quota_limit: args.quota,
        window: Duration::from_secs(args.window_secs),
        listen: Some(args.listen),
    })?;
    hub.set_record_limit(args.max_records);
    generate_resources(&hub, args.generate, args.size);
    for repo in &args.repos {
        hub.add_repo(repo);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the signal runtime")?;
    rt.block_on(async {
        // Handlers go in before the URL is printed: a script that reads the
        // line and immediately sends SIGTERM must get a clean shutdown, not
        // the default signal disposition.
        let signals = Signals::install()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "FAKEHUB_URL={}", hub.url()).context("cannot write to stdout")?;
        out.flush().context("cannot flush stdout")?;
        drop(out);
        signals.wait().await;
        anyhow::Ok(())
    })?;
    drop(hub);
    Ok(())
}

/// The termination signals we wait for.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {})
    }

    #[cfg(unix)]
    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }

    #[cfg(not(unix))]
    async fn wait(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
