//! The hub's services: circuit relay v2 and an AutoNAT v2 server, for verified members only.
//!
//! Both are gated on [`Members`], the set of peers that passed the membership hello: the relay
//! through its rate-limiter hook (asked for every reservation and every circuit a peer
//! requests, so a stranger's request is refused with `RESOURCE_LIMIT_EXCEEDED`), the AutoNAT
//! server by [`MembersOnly`] (in its dropping mode), which drops a stranger's dial-back request before the server can
//! dial anything (the stranger gets an error answer).

use libp2p::{autonat, relay};

use super::gate::Members;
use super::members_only::MembersOnly;
use super::*;

/// Reservations the hub holds at once: a fleet of runners, each behind its own NAT, with
/// room for restarts (a reservation outlives the runner that made it until it expires).
pub const MAX_RESERVATIONS: usize = 1024;
/// How long a reservation lasts before the runner renews it (the client renews on its own).
pub const RESERVATION_DURATION: Duration = Duration::from_secs(3600);
/// Circuits at once: every pair of 50 runners that cannot punch a hole (1225) and room.
pub const MAX_CIRCUITS: usize = 2048;
/// Circuits per peer: one per other member of a large fleet.
pub const MAX_CIRCUITS_PER_PEER: usize = 128;
/// A circuit's lifetime: longer than the longest GitHub-hosted job (6 h); members re-dial
/// through the relay when one ends.
pub const MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(12 * 3600);

/// The relay server's configuration: rust-libp2p's defaults (2 min, 128 KiB, 16 circuits) are
/// sized for hole-punch coordination; a hub carries cache entries of up to 32 MiB between
/// runners that cannot punch a hole, for the whole of a job.
pub(super) fn relay_config(members: Members) -> relay::Config {
    let reservation_gate = members.clone();
    let circuit_gate = members;
    let mut config = relay::Config {
        max_reservations: MAX_RESERVATIONS,
        max_reservations_per_peer: 4,
        reservation_duration: RESERVATION_DURATION,
        reservation_rate_limiters: Vec::new(),
        max_circuits: MAX_CIRCUITS,
        max_circuits_per_peer: MAX_CIRCUITS_PER_PEER,
        max_circuit_duration: MAX_CIRCUIT_DURATION,
        // No byte limit: an entry of any accepted size must cross.
        max_circuit_bytes: 0,
        circuit_src_rate_limiters: Vec::new(),
    };
    config.reservation_rate_limiters.push(Box::new(
        move |peer: PeerId, _: &Multiaddr, _: Instant| {
            let allowed = reservation_gate(&peer);
            if !allowed {
                tracing::warn!(
                    "refused a relay reservation to {peer}: it has not proven the swarm secret"
                );
            }
            allowed
        },
    ));
    config.circuit_src_rate_limiters.push(Box::new(
        move |peer: PeerId, _: &Multiaddr, _: Instant| {
            let allowed = circuit_gate(&peer);
            if !allowed {
                tracing::warn!(
                    "refused a relay circuit to {peer}: it has not proven the swarm secret"
                );
            }
            allowed
        },
    ));
    // Members renew and re-dial; these only stop a member that misbehaves in a loop.
    config
        .reservation_rate_per_peer(
            std::num::NonZeroU32::new(30).unwrap(),
            Duration::from_secs(120),
        )
        .circuit_src_per_peer(
            std::num::NonZeroU32::new(240).unwrap(),
            Duration::from_secs(60),
        )
}

/// The AutoNAT v2 server, answering members only.
pub(super) type AutonatServer = MembersOnly<autonat::v2::server::Behaviour>;
