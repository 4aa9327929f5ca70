//! The swarm: a libp2p node that shares cache entries with the runners holding the same secret.
//!
//! - [`crypto`]: keys derived from the secret (the hello's password, key ids, seals).
//! - [`pake`]: the hello's SPAKE2 run, which proves the secret without revealing anything to test.
//! - [`protocol`]: the wire messages (`docs/protocol.md` describes the protocol).
//! - [`node`]: the libp2p swarm and its event loop; [`Handle`] is how the rest of the daemon
//!   talks to it.
//! - [`identity`]: the persistent ed25519 identity.

pub mod crypto;
pub mod identity;
mod node;
pub mod pake;
pub mod protocol;

use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::config::{Port, Raw};
use crate::error::UserError;

pub use node::{Handle, Node, NodeConfig, Obtained, P2pStats, PeerInfo};

/// Fault injection for the swarm's own tests. Never set it in production: it makes the node
/// misbehave on purpose (`PEERCACHE_TEST_ONLY_FAULT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestFault {
    /// `tamper-bodies`: flip a byte of every body it sends to peers (the seal stays valid, the
    /// digest does not), to show that receivers reject it.
    TamperBodies,
    /// `slow-responses:MS`: wait MS milliseconds before answering a pull, so that a test can
    /// kill the node in the middle of a transfer.
    SlowResponses(Duration),
    /// `silent-announcements`: publish no announcements, as when gossip is lost (a mesh that
    /// has not formed yet), to show that waiters still find what a claimant fetched.
    SilentAnnouncements,
    /// `replay-gossip`: publish every gossip message a second time, sealed afresh (so gossipsub
    /// takes it for a new message, as a recording replayed after its duplicate cache), to show
    /// that receivers refuse replays.
    ReplayGossip,
}

/// The variable that turns a [`TestFault`] on.
pub const TEST_FAULT_VAR: &str = "PEERCACHE_TEST_ONLY_FAULT";

/// Reads [`TEST_FAULT_VAR`].
pub fn test_fault_from_env() -> anyhow::Result<Option<TestFault>> {
    let Ok(value) = std::env::var(TEST_FAULT_VAR) else {
        return Ok(None);
    };
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if value == "tamper-bodies" {
        return Ok(Some(TestFault::TamperBodies));
    }
    if value == "replay-gossip" {
        return Ok(Some(TestFault::ReplayGossip));
    }
    if value == "silent-announcements" {
        return Ok(Some(TestFault::SilentAnnouncements));
    }
    if let Some(ms) = value
        .strip_prefix("slow-responses:")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        return Ok(Some(TestFault::SlowResponses(Duration::from_millis(ms))));
    }
    Err(UserError::usage(format!(
        "invalid {TEST_FAULT_VAR} {value:?}: expected tamper-bodies, silent-announcements, replay-gossip or slow-responses:MS (test-only; unset it in production)"
    ))
    .into())
}

/// The addresses to listen on: the `--listen` values, else TCP and QUIC on every interface at
/// the port (`auto` without `init` lets the system pick).
pub fn listen_addrs(port: Port, listen_flags: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    if !listen_flags.is_empty() {
        return listen_flags
            .iter()
            .map(|text| {
                text.trim().parse::<Multiaddr>().map_err(|e| {
                    UserError::usage(format!("invalid --listen {text:?} ({e}): expected a multiaddr such as /ip4/0.0.0.0/tcp/9000")).into()
                })
            })
            .collect();
    }
    let port = match port {
        Port::Auto => 0,
        Port::Fixed(port) => port,
    };
    Ok(vec![
        format!("/ip4/0.0.0.0/tcp/{port}").parse()?,
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1").parse()?,
    ])
}

/// The bootstrap multiaddrs; malformed ones (or ones without `/p2p/<peer id>`) are skipped
/// with a warning that names the setting, so one bad entry does not take the node down.
pub fn bootstrap_addrs(raw: &[Raw]) -> anyhow::Result<Vec<Multiaddr>> {
    let mut out = Vec::new();
    for item in raw {
        match parse_peer_addr(&item.value) {
            Ok((_, addr)) => out.push(addr),
            Err(why) => tracing::warn!("skipping {} entry {:?}: {why}", item.origin, item.value),
        }
    }
    Ok(out)
}

/// Parses a dialable peer address: a multiaddr that ends in `/p2p/<peer id>`.
pub fn parse_peer_addr(text: &str) -> Result<(PeerId, Multiaddr), String> {
    let addr: Multiaddr = text
        .trim()
        .parse()
        .map_err(|e| format!("not a multiaddr ({e})"))?;
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) if addr.iter().count() > 1 => {
            check_usable(&addr)?;
            Ok((peer, addr))
        }
        _ => Err("expected a multiaddr ending in /p2p/<peer id>, e.g. /ip4/10.0.0.5/tcp/9000/p2p/12D3KooW… or /dns4/hub.example.com/tcp/9000/p2p/12D3KooW…".into()),
    }
}

/// The `--external-addr` values (`PEERCACHE_EXTERNAL_ADDRS`); unusable ones are skipped with a
/// warning that names the setting, the address and the fix.
pub fn external_addrs(raw: &[Raw]) -> Vec<Multiaddr> {
    let mut out = Vec::new();
    for item in raw {
        let parsed = item
            .value
            .trim()
            .parse::<Multiaddr>()
            .map_err(|e| {
                format!("not a multiaddr ({e}); expected e.g. /dns4/hub.example.com/tcp/9000")
            })
            .and_then(|addr| check_usable(&addr).map(|()| addr));
        match parsed {
            Ok(addr) => out.push(addr),
            Err(why) => tracing::warn!("skipping {} entry {:?}: {why}", item.origin, item.value),
        }
    }
    out
}

/// Whether this build can dial an address: `/ip4`, `/ip6`, `/dns4`, `/dns6`, `/dns` or
/// `/dnsaddr`, then TCP or QUIC (none after `/dnsaddr`, whose TXT records hold the rest), then
/// `/p2p/<id>`, optionally through a relay (`/p2p-circuit`). `Err` names the problem and the fix.
pub fn check_usable(addr: &Multiaddr) -> Result<(), String> {
    const FIX: &str = "use /ip4/…, /ip6/…, /dns4/…, /dns6/…, /dns/… or /dnsaddr/… followed by /tcp/PORT or /udp/PORT/quic-v1";
    let protocols: Vec<Protocol> = addr.iter().collect();
    let Some(first) = protocols.first() else {
        return Err(format!("an empty address; {FIX}"));
    };
    let dnsaddr = matches!(first, Protocol::Dnsaddr(_));
    if !matches!(
        first,
        Protocol::Ip4(_)
            | Protocol::Ip6(_)
            | Protocol::Dns(_)
            | Protocol::Dns4(_)
            | Protocol::Dns6(_)
            | Protocol::Dnsaddr(_)
    ) {
        return Err(format!(
            "it starts with /{}, which this build cannot dial; {FIX}",
            first.tag()
        ));
    }
    let mut transport = dnsaddr;
    for (i, p) in protocols.iter().enumerate().skip(1) {
        match p {
            Protocol::Tcp(_) => transport = true,
            Protocol::Udp(_) => {
                if !matches!(protocols.get(i + 1), Some(Protocol::QuicV1)) {
                    return Err(format!(
                        "/udp needs /quic-v1 after it (the only UDP transport here); {FIX}"
                    ));
                }
            }
            Protocol::QuicV1 => transport = true,
            Protocol::P2p(_) | Protocol::P2pCircuit => {}
            other => {
                return Err(format!(
                    "it uses /{}, which this build cannot dial; {FIX}",
                    other.tag()
                ));
            }
        }
    }
    if !transport {
        return Err(format!("it names no transport; {FIX}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;

    #[test]
    fn bootstrap_skips_malformed_entries() {
        let peer = PeerId::random();
        let raw = |v: &str| Raw {
            value: v.to_string(),
            origin: Origin::Env("PEERCACHE_BOOTSTRAP_PEERS"),
        };
        let good = format!("/ip4/127.0.0.1/tcp/9000/p2p/{peer}");
        let addrs = bootstrap_addrs(&[
            raw("garbage"),
            raw("/ip4/127.0.0.1/tcp/9000"),
            raw(&good),
            raw(&format!("/p2p/{peer}")),
        ])
        .unwrap();
        assert_eq!(addrs.len(), 1);
        assert_eq!(addrs[0].to_string(), good);
    }

    #[test]
    fn usable_addresses_cover_dns_and_circuits_and_name_the_fix() {
        let peer = PeerId::random();
        let relay = PeerId::random();
        for good in [
            format!("/dns4/localhost/tcp/9000/p2p/{peer}"),
            format!("/dns6/localhost/udp/9000/quic-v1/p2p/{peer}"),
            format!("/dns/hub.example.com/tcp/9000/p2p/{peer}"),
            format!("/dnsaddr/hub.example.com/p2p/{peer}"),
            format!("/ip4/10.0.0.1/tcp/9000/p2p/{relay}/p2p-circuit/p2p/{peer}"),
        ] {
            assert!(parse_peer_addr(&good).is_ok(), "{good}");
        }
        for (bad, says) in [
            (format!("/ip4/10.0.0.1/tcp/9000/ws/p2p/{peer}"), "/ws"),
            (format!("/ip4/10.0.0.1/udp/9000/p2p/{peer}"), "/quic-v1"),
            (format!("/dns4/hub.example.com/p2p/{peer}"), "no transport"),
            (format!("/unix/tmp%2Fsock/p2p/{peer}"), "/unix"),
        ] {
            let why = parse_peer_addr(&bad).unwrap_err();
            assert!(
                why.contains(says) && why.contains("/tcp/PORT"),
                "{bad}: {why}"
            );
        }
    }

    #[test]
    fn external_addrs_skip_unusable_entries() {
        let raw = |v: &str| Raw {
            value: v.to_string(),
            origin: Origin::Env("PEERCACHE_EXTERNAL_ADDRS"),
        };
        let addrs = external_addrs(&[
            raw("/dns4/hub.example.com/tcp/9000"),
            raw("/ip4/1.2.3.4/tcp/9000/ws"),
            raw("nonsense"),
        ]);
        assert_eq!(addrs.len(), 1);
        assert_eq!(addrs[0].to_string(), "/dns4/hub.example.com/tcp/9000");
    }

    #[test]
    fn default_listen_addrs_use_the_port() {
        let addrs = listen_addrs(Port::Fixed(9010), &[]).unwrap();
        assert_eq!(addrs[0].to_string(), "/ip4/0.0.0.0/tcp/9010");
        assert_eq!(addrs[1].to_string(), "/ip4/0.0.0.0/udp/9010/quic-v1");
        assert!(listen_addrs(Port::Auto, &["nope".into()]).is_err());
    }
}
