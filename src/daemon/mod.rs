//! The daemon behind `peercache serve`: the p2p node and the local API in one process.
//!
//! Shaped like tokio's mini-redis server: [`run`] builds a runtime and calls [`serve`], which
//! starts each part in order, serves until SIGINT or SIGTERM, then shuts down in reverse:
//!
//! ```text
//! settings ─► one daemon per state dir (serve.lock) ─► cache ─► identity
//!          ─► p2p node (only with a swarm secret) ─► resolver ─► local API on loopback
//!          ─► serve.json ─► … serve until a signal …
//!          ─► API drains ─► node shuts down ─► serve.json removed ─► exit 0
//! ```
//!
//! [`detach`] is `serve --daemon`: it re-runs the binary as a foreground `serve` in a new
//! session and returns once that daemon answers. [`remote`] is the other side: how `fetch`
//! finds and uses a running daemon.

pub mod api;
pub mod client;
pub mod conn;
mod detach;
pub mod gh;
pub mod hot;
pub mod metrics;
pub mod remote;
mod server;
pub mod state;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::cache::Cache;
use crate::config::{Origin, Settings, SwarmSecret};
use crate::error::{Exit, UserError};
use crate::github::GitHub;
use crate::resolver::Resolver;
use crate::secret::Secret;

pub use detach::detach;

/// How long in-flight API requests may take to finish after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Memory for bodies the daemon has verified once (16 MiB: ~800 REST objects of 20 KB).
const VERIFIED_BODIES_BUDGET: u64 = 16 << 20;

/// The `serve` options that are not settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `--listen` multiaddrs as given (none: TCP and QUIC on 0.0.0.0 at the port).
    pub listen: Vec<String>,
    /// `--api-addr`, checked to be loopback.
    pub api_addr: SocketAddr,
}

/// Parses `--api-addr` and refuses anything but a loopback address.
pub fn parse_api_addr(text: &str) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = text.trim().parse().map_err(|_| {
        UserError::usage(format!(
            "invalid --api-addr {text:?}: expected IP:PORT on loopback, e.g. 127.0.0.1:0"
        ))
    })?;
    if !addr.ip().is_loopback() {
        return Err(UserError::usage(format!(
            "--api-addr {addr} is not a loopback address; the local API serves the cache without a token, so it only listens on 127.0.0.1 or ::1"
        ))
        .into());
    }
    Ok(addr)
}

/// What `serve` checks before it starts anything (also run by `serve --daemon`, so that bad
/// flags fail in the foreground with exit 2 instead of in the detached child).
pub fn preflight(settings: &Settings, options: &ServeOptions) -> anyhow::Result<()> {
    crate::p2p::listen_addrs(settings.port, &options.listen)?;
    crate::p2p::bootstrap_addrs(&settings.bootstrap_peers)?;
    crate::p2p::test_fault_from_env()?;
    crate::registry::parse_specs(&settings.registries)?;
    crate::registry::interval_override()?;
    Ok(())
}

/// Runs the daemon in the foreground until SIGINT or SIGTERM.
pub fn run(settings: &Settings, options: &ServeOptions) -> anyhow::Result<Exit> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("peercache")
        .enable_all()
        .build()?;
    runtime.block_on(serve(settings, options))
}

/// Why sharing is on (the secret) or off (the reason to show).
fn sharing(settings: &Settings) -> Result<Secret, String> {
    if !settings.p2p {
        return Err("PEERCACHE_P2P is false".to_string());
    }
    match &settings.secret {
        SwarmSecret::Set { secret, origin } => {
            if matches!(origin, Origin::Env("GH_TOKEN" | "GITHUB_TOKEN")) {
                tracing::info!(
                    "{origin} (a long-lived token) is the swarm secret, as {} asks: every runner holding this token joins the swarm",
                    crate::config::SECRET_FROM_TOKEN_VAR
                );
            }
            Ok(secret.clone())
        }
        SwarmSecret::Missing { reason } => Err(reason.clone()),
    }
}

async fn serve(settings: &Settings, options: &ServeOptions) -> anyhow::Result<Exit> {
    // In GitHub Actions the startup's lines fold into one group, which ends at "ready".
    let startup = crate::logging::group("peercache serve: starting the daemon");
    // Signals first: a stop request during startup still ends in a clean shutdown.
    let mut stop = StopSignal::install()?;
    preflight(settings, options)?;

    // Peers, clients and cache files each take a descriptor; the usual soft limit of 1,024
    // is far below what the hard limit allows.
    if let Some(limit) = server::raise_open_files_limit() {
        tracing::debug!("open files limit: {limit}");
    }

    // One daemon per state dir. The lock lives as long as this function (or the process).
    state::ensure_home(&settings.home)?;
    let Some(_lock) = state::try_lock(&settings.home)? else {
        return Err(state::already_running(&settings.home).into());
    };

    // Hot entries are hashed once, then served from memory (see cache/verified.rs).
    let cache = Cache::open(&settings.cache_dir, settings.max_size)?
        .with_verified_bodies(VERIFIED_BODIES_BUDGET.min(settings.max_size));
    let keypair = crate::p2p::identity::load_or_create(&settings.home)?;
    let peer_id = keypair.public().to_peer_id();
    tracing::info!(
        "peercache {} starting: peer id {peer_id}, state dir {}, cache dir {}, upstream {}",
        env!("CARGO_PKG_VERSION"),
        settings.home.display(),
        settings.cache_dir.display(),
        settings.api_url.as_str().trim_end_matches('/'),
    );

    // libp2p's own metrics, served under /metrics with the daemon's.
    let mut libp2p_registry = prometheus_client::registry::Registry::default();
    // The p2p node runs only when the swarm has a secret; the local cache works either way.
    let (node, sharing_reason) = match sharing(settings) {
        Ok(secret) => {
            let config = crate::p2p::NodeConfig {
                keypair,
                listen: crate::p2p::listen_addrs(settings.port, &options.listen)?,
                bootstrap: crate::p2p::bootstrap_addrs(&settings.bootstrap_peers)?,
                secret,
                // Nodes of other scopes derive other keys: they cannot read key ids or pass the hello.
                scope: settings.scope.key_material(),
                cache: cache.clone(),
                runner_name: std::env::var("RUNNER_NAME").ok().filter(|v| !v.is_empty()),
                mdns: settings.mdns,
                test_fault: crate::p2p::test_fault_from_env()?,
                metrics: Some(libp2p::metrics::Metrics::new(&mut libp2p_registry)),
                hub: settings.hub,
                external_addrs: crate::p2p::external_addrs(&settings.external_addrs),
                // Members ask this node to revalidate what its own token fetched.
                token_tag: settings
                    .token
                    .as_ref()
                    .map(|t| crate::cache::token_tag(Some(t.expose()))),
                full_mesh: settings.full_mesh,
            };
            let node = crate::p2p::Node::start(config)
                .await
                .context("the p2p node did not start")?;
            let addrs: Vec<String> = node
                .handle()
                .listen_addrs()
                .iter()
                .map(ToString::to_string)
                .collect();
            tracing::info!("peer sharing is on; libp2p listens on {}", addrs.join(", "));
            (Some(node), None)
        }
        Err(reason) => {
            tracing::warn!("peer sharing is off: {reason}");
            (None, Some(reason))
        }
    };
    let handle = node.as_ref().map(crate::p2p::Node::handle);

    // One HTTP client (and pool) for the resolver and the requests the API passes through.
    let github = GitHub::new()?;
    let mut resolver = Resolver::new(cache.clone(), github.clone(), &settings.api_url)
        .with_home_repository(settings.repository.clone())
        .with_max_entry(settings.max_entry);
    if let Some(handle) = &handle {
        resolver = resolver.with_peers(handle.clone());
        // Revalidations members ask for use this daemon's own token, never theirs.
        let (for_peers, token) = (resolver.clone(), settings.token.clone());
        handle.set_revalidator(Arc::new(move |entry, body, ttl| {
            let (resolver, token) = (for_peers.clone(), token.clone());
            Box::pin(async move { resolver.revalidate_for_peer(token, entry, body, ttl).await })
        }));
    }

    // The registries: opened now (a registry that cannot work stops the start), run once the
    // daemon is ready. Without sharing there is nothing to publish or dial.
    let registries: Vec<Arc<dyn crate::registry::Registry>> = match &handle {
        Some(handle) => {
            let ctx = crate::registry::Context::new(settings, cache.clone(), Some(handle.clone()))?;
            crate::registry::open_all(&settings.registries, &ctx)?
                .into_iter()
                .map(Arc::from)
                .collect()
        }
        None => Vec::new(),
    };

    // The local API, on loopback, behind a fresh capability.
    let listener = TcpListener::bind(options.api_addr).await.map_err(|e| {
        UserError::usage(format!(
            "cannot listen on --api-addr {} ({e}); pick another port, or 127.0.0.1:0 for any",
            options.api_addr
        ))
    })?;
    let local = listener.local_addr()?;
    let capability = api::new_capability();
    let api_url = format!("http://{local}/{capability}");
    let origin = format!("http://{local}");
    let api = Arc::new(api::Api {
        bases: api::Bases::new(&origin, &capability),
        sent: gh::SentBodies::default(),
        capability,
        origin,
        upstream: settings.api_url.clone(),
        resolver,
        github,
        cache,
        default_token: settings.token.clone(),
        default_ttl: settings.ttl,
        peers: handle.clone(),
        sharing_reason: sharing_reason.clone(),
        scope: settings.scope.to_string(),
        peer_id: peer_id.to_string(),
        observer: metrics::Observer::new(),
        limit_figures: gh::LimitFigures::default(),
        hot: hot::HotAnswers::default(),
        libp2p_registry,
    });
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = server::Limits::from_env();
    let mut server = tokio::spawn(server::serve(
        listener,
        Arc::clone(&api),
        api::router(api),
        limits,
        async {
            let _ = drain_rx.await;
        },
    ));
    tracing::info!(
        "local API listens on http://{local} (its base URL is in serve.json; at most {} connections)",
        limits.max_connections
    );

    let pid = std::process::id();
    let info = state::ServeInfo {
        pid,
        peer_id: peer_id.to_string(),
        listen_addrs: handle
            .as_ref()
            .map(|h| h.listen_addrs().iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        api_url: api_url.clone(),
        started_at: state::now_secs(),
        sharing: sharing_reason.is_none(),
        sharing_reason,
        upstream_url: Some(settings.api_url.as_str().trim_end_matches('/').to_string()),
    };
    state::write(&settings.home, &info)?;
    // For people running it by hand; a closed stdout must not stop the daemon.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "PEERCACHE_API={api_url}").and_then(|()| out.flush());
    }
    tracing::info!("ready (pid {pid})");
    startup.end();

    let heartbeat = match &handle {
        Some(handle) if !registries.is_empty() => Some(crate::registry::heartbeat::spawn(
            registries,
            handle.clone(),
            crate::registry::interval_override()?,
        )),
        _ => None,
    };
    // Listeners on 0.0.0.0 report each interface's address as it comes up: keep serve.json's
    // list (which `register` publishes) current.
    let refresh = handle
        .clone()
        .map(|handle| tokio::spawn(refresh_listen_addrs(settings.home.clone(), info, handle)));

    // Serve until a signal, or until the server fails on its own.
    let outcome = tokio::select! {
        signal = stop.recv() => {
            tracing::info!("{signal} received; shutting down");
            Ok(())
        }
        ended = &mut server => Err(match ended {
            Ok(()) => anyhow::anyhow!("the local API stopped unexpectedly"),
            Err(e) => anyhow::anyhow!("the local API failed: {e}"),
        }),
    };

    // Shut down in reverse: leave the registries, drain the API, stop the node, remove
    // serve.json.
    if let Some(refresh) = refresh {
        refresh.abort();
    }
    if let Some(heartbeat) = heartbeat {
        heartbeat.stop().await;
    }
    let _ = drain_tx.send(());
    if !server.is_finished()
        && tokio::time::timeout(DRAIN_TIMEOUT, &mut server)
            .await
            .is_err()
    {
        tracing::warn!(
            "requests still running after {} s; closing them",
            DRAIN_TIMEOUT.as_secs()
        );
        server.abort();
    }
    if let Some(node) = node {
        node.shutdown().await;
    }
    state::remove_if_owned(&settings.home, pid);
    outcome?;
    tracing::info!("stopped");
    Ok(Exit::Ok)
}

/// How often serve.json's listen addresses are compared with the node's.
const ADDR_REFRESH: Duration = Duration::from_secs(2);

/// Rewrites serve.json whenever the node's listen addresses change.
async fn refresh_listen_addrs(
    home: std::path::PathBuf,
    mut info: state::ServeInfo,
    handle: crate::p2p::Handle,
) {
    loop {
        tokio::time::sleep(ADDR_REFRESH).await;
        let addrs: Vec<String> = handle
            .listen_addrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        if addrs != info.listen_addrs {
            info.listen_addrs = addrs;
            if let Err(e) = state::write(&home, &info) {
                tracing::warn!("cannot update serve.json: {e:#}");
            }
        }
    }
}

/// SIGINT and SIGTERM, installed once.
struct StopSignal {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> anyhow::Result<StopSignal> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignal {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next one and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
