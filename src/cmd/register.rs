//! `peercache register [--registry SPEC] [--ttl SECONDS]`: publish the running daemon's record to
//! each registry (the daemon also does it itself, as a heartbeat).

use clap::Args;
use libp2p::{Multiaddr, PeerId};

use crate::cache::Cache;
use crate::config::{Origin, Raw, Settings, parse_ttl};
use crate::daemon::state;
use crate::error::{Exit, UserError};
use crate::registry::{self, Context, PeerRecord};

/// Arguments of `peercache register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Registries, comma-separated: dir:PATH, issue:OWNER/REPO[#N] [env: PEERCACHE_REGISTRY]
    #[arg(long, value_name = "SPEC")]
    pub registry: Option<String>,
    /// How long the record stays valid, in seconds [default: 2.5 heartbeat intervals of the registry]
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<String>,
}

/// Runs `register`.
pub fn run(settings: &Settings, args: RegisterArgs) -> anyhow::Result<Exit> {
    let ttl = match &args.ttl {
        Some(value) => {
            let raw = Raw {
                value: value.clone(),
                origin: Origin::Flag("--ttl"),
            };
            let ttl = parse_ttl(&raw)?;
            if ttl.is_zero() {
                return Err(UserError::usage(
                    "invalid --ttl \"0\": a record must live at least one second",
                )
                .into());
            }
            if ttl > registry::MAX_RECORD_TTL {
                return Err(UserError::usage(format!(
                    "invalid --ttl {value:?}: a record may live at most {} seconds (7 days); the daemon's heartbeat renews it",
                    registry::MAX_RECORD_TTL.as_secs()
                ))
                .into());
            }
            Some(ttl)
        }
        None => None,
    };
    let Some(info) = state::live(&settings.home) else {
        return Err(UserError::usage(format!(
            "no peercache daemon is running for {}; start it with peercache serve --daemon",
            settings.home.display()
        ))
        .into());
    };
    if !info.sharing {
        return Err(UserError::usage(format!(
            "the daemon (pid {}) does not share, so there is nothing to register: {}",
            info.pid,
            info.sharing_reason
                .as_deref()
                .unwrap_or("peer sharing is off")
        ))
        .into());
    }
    let peer_id: PeerId = info.peer_id.parse().map_err(|_| {
        anyhow::anyhow!(
            "serve.json names the peer id {:?}, which does not parse",
            info.peer_id
        )
    })?;
    let listen: Vec<Multiaddr> = info
        .listen_addrs
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();

    let cache = Cache::open(&settings.cache_dir, settings.max_size)?;
    let ctx = Context::new(settings, cache, None)?;
    let registries = registry::open_all(&settings.registries, &ctx)?;
    if registries.is_empty() {
        return Err(UserError::usage(
            "no registry to register with (the registry setting is none); pass --registry dir:PATH or issue:OWNER/REPO",
        )
        .into());
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut failed = 0;
    for registry in &registries {
        let name = registry.name();
        let addrs = registry::dialable_addrs(&listen, &peer_id, registry.is_host_local());
        if addrs.is_empty() {
            tracing::error!(
                "not registering in {name}: the daemon has no address a reader of it could dial (it listens on {}); listen on a routable address",
                info.listen_addrs.join(", ")
            );
            failed += 1;
            continue;
        }
        let lifetime = ttl.unwrap_or_else(|| {
            registry::record_ttl(registry::interval_of(
                registry.as_ref(),
                ctx.interval_override,
            ))
        });
        let record = PeerRecord::new(&peer_id, addrs, lifetime);
        match runtime.block_on(registry.publish(&record)) {
            Ok(()) => println!(
                "registered {peer_id} in {name}: {} address(es), valid for {} s",
                record.multiaddrs.len(),
                lifetime.as_secs()
            ),
            Err(e) => {
                tracing::error!("cannot register in {name}: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(anyhow::anyhow!(
            "registered in {} of {} registries",
            registries.len() - failed,
            registries.len()
        ));
    }
    Ok(Exit::Ok)
}
