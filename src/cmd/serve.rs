//! `peercache serve [--daemon] [--listen MULTIADDR]… [--api-addr 127.0.0.1:0]`: run the node and
//! the local API (see [`crate::daemon`]).

use clap::Args;

use crate::config::Settings;
use crate::daemon::{self, ServeOptions};
use crate::error::Exit;

/// Arguments of `peercache serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Start detached (new session, output to $PEERCACHE_HOME/serve.log), wait until ready,
    /// print PEERCACHE_API=<base url> and exit
    #[arg(long)]
    pub daemon: bool,
    /// libp2p listen address (repeatable) [default: TCP and QUIC on 0.0.0.0 at the p2p port]
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Address of the local API; loopback only
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:0")]
    pub api_addr: String,
    /// p2p port, or auto [env: PEERCACHE_PORT]
    #[arg(long, value_name = "N|auto")]
    pub port: Option<String>,
    /// Bootstrap peers: comma-separated multiaddrs ending in /p2p/<peer id> [env: PEERCACHE_BOOTSTRAP_PEERS]
    #[arg(long, value_name = "MULTIADDRS")]
    pub bootstrap: Option<String>,
    /// Freshness TTL in seconds for API requests without x-peercache-ttl [env: PEERCACHE_TTL; default 300]
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<String>,
    /// Registries to publish to and read peers from: dir:PATH, issue:OWNER/REPO[#N], none [env: PEERCACHE_REGISTRY]
    #[arg(long, value_name = "SPECS")]
    pub registry: Option<String>,
    /// Discover peers on the LAN with mDNS: true or false [env: PEERCACHE_MDNS; default true]
    #[arg(long, value_name = "BOOL")]
    pub mdns: Option<String>,
    /// Who shares the swarm: repository (this GITHUB_REPOSITORY), owner, or a swarm name [env: PEERCACHE_SCOPE; default repository]
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,
    /// Run as a hub: relay v2 and AutoNAT v2 server for verified members, a bootstrap point [env: PEERCACHE_HUB]
    #[arg(long)]
    pub hub: bool,
    /// An address this node is reachable at from outside (repeatable), e.g. /dns4/hub.example.com/tcp/9000 [env: PEERCACHE_EXTERNAL_ADDRS]
    #[arg(long = "external-addr", value_name = "MULTIADDR")]
    pub external_addr: Vec<String>,
}

/// Runs `serve` (in the foreground, or detached with `--daemon`).
pub fn run(settings: &Settings, args: ServeArgs) -> anyhow::Result<Exit> {
    let options = ServeOptions {
        api_addr: daemon::parse_api_addr(&args.api_addr)?,
        listen: args.listen,
    };
    if args.daemon {
        daemon::preflight(settings, &options)?;
        daemon::detach(settings)
    } else {
        daemon::run(settings, &options)
    }
}
