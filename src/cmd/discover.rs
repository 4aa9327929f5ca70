//! `peercache discover [--registry SPEC] [--format lines|env|json] [--github-env] [--connect]`:
//! the live peers of the registries and the bootstrap setting, other than this node.

use std::time::Duration;

use clap::{Args, ValueEnum};
use libp2p::PeerId;
use libp2p::identity::Keypair;

use crate::cache::Cache;
use crate::config::Settings;
use crate::daemon::{client, state};
use crate::error::{Exit, UserError};
use crate::p2p::identity::IDENTITY_FILE;
use crate::registry::{self, Context, Discovered, Merged};

/// Arguments of `peercache discover`.
#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Registries, comma-separated: dir:PATH, issue:OWNER/REPO[#N] [env: PEERCACHE_REGISTRY]
    #[arg(long, value_name = "SPEC")]
    pub registry: Option<String>,
    /// lines: one multiaddr per line; env: PEERCACHE_BOOTSTRAP_PEERS=<comma-joined>; json: the records
    #[arg(long, value_enum, default_value_t = Format::Lines)]
    format: Format,
    /// Also write PEERCACHE_BOOTSTRAP_PEERS to $GITHUB_ENV and peers, peer-count to $GITHUB_OUTPUT
    #[arg(long)]
    github_env: bool,
    /// Ask the running daemon to dial the peers found
    #[arg(long)]
    connect: bool,
}

/// How `discover` prints the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One multiaddr per line.
    Lines,
    /// `PEERCACHE_BOOTSTRAP_PEERS=<comma-joined multiaddrs>`.
    Env,
    /// A JSON array of the peers' records.
    Json,
}

/// How long the daemon may take to accept a `--connect`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `discover`.
pub fn run(settings: &Settings, args: DiscoverArgs) -> anyhow::Result<Exit> {
    // `--connect` needs a daemon: say so before reading anything.
    let daemon = match args.connect {
        true => Some(state::live(&settings.home).ok_or_else(|| {
            UserError::usage(format!(
                "--connect needs a running daemon, and none runs for {}; start it with peercache serve --daemon",
                settings.home.display()
            ))
        })?),
        false => None,
    };
    let own = own_peer_id(settings);

    let cache = Cache::open(&settings.cache_dir, settings.max_size)?;
    let ctx = Context::new(settings, cache, None)?;
    let registries = registry::open_all(&settings.registries, &ctx)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut merged = Merged::default();
    for registry in &registries {
        match runtime.block_on(registry.list()) {
            Ok(records) => {
                for record in records {
                    merged.add(record, &registry.name());
                }
            }
            Err(e) => tracing::warn!("cannot read the registry {}: {e:#}", registry.name()),
        }
    }
    // Malformed entries are skipped with a warning that names the setting.
    merged.add_static(&crate::p2p::bootstrap_addrs(&settings.bootstrap_peers)?);
    let peers = merged.without(own.as_deref());
    let addrs = peer_addrs(&peers);

    match args.format {
        Format::Lines => {
            for addr in &addrs {
                println!("{addr}");
            }
        }
        Format::Env => println!("PEERCACHE_BOOTSTRAP_PEERS={}", addrs.join(",")),
        Format::Json => println!(
            "{}",
            crate::logging::defuse_json(serde_json::to_string_pretty(&peers)?)
        ),
    }
    tracing::debug!(
        "found {} peer(s) with {} address(es)",
        peers.len(),
        addrs.len()
    );

    if args.github_env {
        let joined = addrs.join(",");
        crate::actions::set_env("PEERCACHE_BOOTSTRAP_PEERS", &joined)?;
        crate::actions::set_output("peers", &joined)?;
        crate::actions::set_output("peer-count", &peers.len().to_string())?;
    }
    if let Some(info) = daemon {
        connect(&info, &addrs)?;
    }
    Ok(Exit::Ok)
}

/// Every address of every peer, each checked once more: only well-formed multiaddrs ending in
/// the peer's own `/p2p/` id, without spaces or commas, ever reach stdout or `$GITHUB_ENV`.
fn peer_addrs(peers: &[Discovered]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for peer in peers {
        let Ok(id) = peer.record.peer_id.parse::<PeerId>() else {
            continue;
        };
        for addr in &peer.record.multiaddrs {
            match registry::check_peer_addr(addr, &id) {
                Ok(addr) if !out.contains(&addr) => out.push(addr),
                Ok(_) => {}
                Err(why) => tracing::warn!("skipping address {addr:?}: {why}"),
            }
        }
    }
    out
}

/// This node's peer id: the running daemon's, else the identity file's (never created here).
fn own_peer_id(settings: &Settings) -> Option<String> {
    if let Some(info) = state::read(&settings.home) {
        return Some(info.peer_id);
    }
    let bytes = std::fs::read(settings.home.join(IDENTITY_FILE)).ok()?;
    let keypair = Keypair::from_protobuf_encoding(&bytes).ok()?;
    Some(keypair.public().to_peer_id().to_string())
}

/// `POST /api/connect` to the daemon.
fn connect(info: &state::ServeInfo, addrs: &[String]) -> anyhow::Result<()> {
    if addrs.is_empty() {
        eprintln!("no peer to connect to");
        return Ok(());
    }
    let endpoint = client::Endpoint::parse(&info.api_url).ok_or_else(|| {
        anyhow::anyhow!(
            "serve.json names an API URL that is not loopback HTTP: {}",
            info.api_url
        )
    })?;
    let body = serde_json::to_vec(addrs)?;
    let response = client::post_json(&endpoint, "/api/connect", &body, CONNECT_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("cannot reach the daemon (pid {}): {e}", info.pid))?;
    let message = || {
        serde_json::from_slice::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&response.body).into_owned())
    };
    match response.status {
        200 => {
            let dialed = serde_json::from_slice::<serde_json::Value>(&response.body)
                .ok()
                .and_then(|v| v.get("dialed").and_then(serde_json::Value::as_u64))
                .unwrap_or(0);
            eprintln!(
                "asked the daemon (pid {}) to dial {dialed} address(es)",
                info.pid
            );
            Ok(())
        }
        409 => Err(UserError::usage(message()).into()),
        status => Err(anyhow::anyhow!(
            "the daemon answered {status} to --connect: {}",
            message()
        )),
    }
}
