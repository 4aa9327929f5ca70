//! A stranger: a small libp2p client with a throwaway identity and no secret, speaking what a
//! peercache node speaks (gossipsub, Kademlia on `/peercache/kad/1`, identify, ping) but never
//! the membership hello. Its TCP connections can come from any loopback address
//! (127.0.0.0/8), so that tests can tell "one host" from "many hosts" on one machine.
//!
//! Use it with `#[path = "common/stranger.rs"] mod stranger;` (it is not in `common/mod.rs`,
//! which the benchmark driver includes without libp2p).

#![allow(dead_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::{Transport, upgrade};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, gossipsub, identify, kad, noise, ping, yamux,
};

/// The Kademlia protocol of peercache nodes.
pub const KAD_PROTOCOL: &str = "/peercache/kad/1";

/// What a stranger speaks.
#[derive(NetworkBehaviour)]
pub struct StrangerBehaviour {
    pub gossipsub: gossipsub::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
}

/// A stranger's swarm.
pub type Stranger = Swarm<StrangerBehaviour>;

/// TCP whose dials leave from one chosen address (it cannot listen).
struct BoundTcp {
    source: Ipv4Addr,
}

impl Transport for BoundTcp {
    type Output = libp2p::tcp::tokio::TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = futures::future::Pending<io::Result<Self::Output>>;
    type Dial = BoxFuture<'static, io::Result<Self::Output>>;

    fn listen_on(
        &mut self,
        _id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _id: ListenerId) -> bool {
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        let mut ip = None;
        let mut port = None;
        for p in addr.iter() {
            match p {
                Protocol::Ip4(a) => ip = Some(a),
                Protocol::Tcp(p) => port = Some(p),
                Protocol::P2p(_) => {}
                _ => return Err(TransportError::MultiaddrNotSupported(addr)),
            }
        }
        let (Some(ip), Some(port)) = (ip, port) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let source = self.source;
        Ok(Box::pin(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_nodelay(true)?;
            socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
            let stream = socket
                .connect(SocketAddr::new(IpAddr::V4(ip), port))
                .await?;
            Ok(libp2p::tcp::tokio::TcpStream(stream))
        }))
    }

    fn poll(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Poll::Pending
    }
}

/// A stranger with a new identity whose connections leave from `source` (a loopback address).
pub fn stranger_from(source: Ipv4Addr) -> Stranger {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key).expect("noise");
            BoundTcp { source }
                .upgrade(upgrade::Version::V1)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .timeout(Duration::from_secs(10))
        })
        .expect("transport")
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_millis(700))
                    .build()
                    .expect("gossipsub config"),
            )
            .expect("gossipsub");
            let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
            kad_config.set_query_timeout(Duration::from_secs(5));
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad_config,
            );
            kad.set_mode(Some(kad::Mode::Client));
            Ok(StrangerBehaviour {
                gossipsub,
                kad,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/peercache/id/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(ping::Config::new()),
            })
        })
        .expect("behaviour")
        // Longer than any deadline under test: the node, not the stranger, closes.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build()
}

/// A stranger on 127.0.0.1.
pub fn stranger() -> Stranger {
    stranger_from(Ipv4Addr::LOCALHOST)
}

/// The peer id at the end of `addr` (`…/p2p/<id>`).
pub fn peer_of(addr: &Multiaddr) -> PeerId {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => peer,
        _ => panic!("{addr} does not end in /p2p/<peer id>"),
    }
}

/// `addr` without its `/p2p/<id>`.
pub fn without_peer(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}
