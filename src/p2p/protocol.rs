//! Wire messages; `docs/protocol.md` describes the protocol around them.

use serde::{Deserialize, Serialize};

use super::crypto::{KeyId, SwarmKeys};
use crate::cache::Entry;

/// The request-response protocol name.
pub const EXCHANGE_PROTOCOL: &str = "/peercache/exchange/2";
/// Identify's protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/peercache/id/1";
/// The largest request accepted (requests are tiny).
pub const MAX_REQUEST_BYTES: u64 = 16 * 1024;
/// The largest response accepted: a sealed entry of up to 32 MiB.
pub const MAX_RESPONSE_BYTES: u64 = 32 * 1024 * 1024 + 64 * 1024;

/// The gossipsub topic of every swarm. A constant: a name derived from the secret would hand
/// every stranger that connects something to test guesses against. Swarms still cannot read
/// each other, since every payload is sealed with the swarm's key.
pub const ANNOUNCE_TOPIC: &str = "peercache/v1/announce";
/// AAD of sealed gossip messages.
pub const GOSSIP_AAD: &[u8] = b"peercache/v1/gossip";

/// A request over the exchange protocol (CBOR).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// A hello's first step: the initiator's SPAKE2 message ([`super::pake`]). Answered with
    /// `HelloReply` (or `Denied` when it is malformed).
    Hello {
        /// [`super::pake::Initiator::start`]'s message.
        #[serde(with = "serde_bytes")]
        pake: Vec<u8>,
    },
    /// A hello's third step, once the responder's confirmation verified: the initiator's own
    /// confirmation and its [`PeerMeta`], sealed under the run's key. Answered with `Welcome`,
    /// or `Denied` when it does not verify.
    HelloConfirm {
        /// [`super::pake::Session::initiator_confirm`].
        #[serde(with = "serde_bytes")]
        confirm: Vec<u8>,
        /// [`super::pake::Session::seal_meta`] of the JSON of [`PeerMeta`].
        #[serde(with = "serde_bytes")]
        meta: Vec<u8>,
    },
    /// "Send me the entry with this key id."
    Pull {
        /// The key id (HMAC of the cache key).
        #[serde(with = "serde_bytes")]
        key_id: Vec<u8>,
    },
    /// To the member whose token fetched the entry's ETag: "revalidate this key with your own
    /// token and send me the renewed (or changed) entry". Answered with `Entry`, or `NotFound`
    /// when it holds no copy of its own token's ETag or GitHub did not renew it.
    Revalidate {
        /// The key id.
        #[serde(with = "serde_bytes")]
        key_id: Vec<u8>,
        /// The requester's TTL in ms: a copy fresh for it is sent without calling GitHub.
        ttl_ms: u64,
    },
    /// To the key's coordinator: "nobody I know holds this key; may I fetch it from GitHub?"
    Claim {
        /// The key id.
        #[serde(with = "serde_bytes")]
        key_id: Vec<u8>,
        /// The requester's TTL in ms: holders older than this are of no use to it.
        ttl_ms: u64,
        /// In a bounded overlay, a claim passed on towards the coordinator names the member
        /// that asked first: it is the one granted the claim and waited for.
        #[serde(default)]
        on_behalf_of: Option<serde_bytes::ByteBuf>,
    },
    /// To a neighbour in a bounded overlay: "I now hold a copy of this key (pulled from a
    /// member)". Said to neighbours only, not flooded: a copy only saves neighbours a dial.
    /// Answered with `Noted`.
    Have {
        /// The key id.
        #[serde(with = "serde_bytes")]
        key_id: Vec<u8>,
        /// When the copy was fetched or revalidated upstream (ms since the epoch).
        fetched_at_ms: u64,
    },
    /// From a member joining a bounded overlay: "which members do you know, nearest to me
    /// first?" Answered with `Members`. The joiner picks its neighbours from the list instead of
    /// walking Kademlia, whose lookups connect it to most of the swarm. An older peer cannot
    /// decode it and drops the stream; the joiner then looks its buckets up in Kademlia.
    Members {
        /// The most members the requester wants listed (the answerer lists at most
        /// [`MAX_MEMBERS_LISTED`]).
        limit: u32,
    },
}

/// The most members a `Members` answer lists (a peer id and up to 4 addresses each).
pub const MAX_MEMBERS_LISTED: usize = 2048;
/// The most addresses a `Members` answer gives per member.
pub const MAX_ADDRS_LISTED: usize = 4;

/// One member in a `Members` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListedMember {
    /// Its peer id, as bytes.
    #[serde(with = "serde_bytes")]
    pub id: Vec<u8>,
    /// Where it listens (multiaddrs as bytes), at most [`MAX_ADDRS_LISTED`].
    pub addrs: Vec<serde_bytes::ByteBuf>,
}

/// A response over the exchange protocol (CBOR).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// A hello's second step: the responder's SPAKE2 message and its key confirmation.
    HelloReply {
        /// [`super::pake::respond`]'s message.
        #[serde(with = "serde_bytes")]
        pake: Vec<u8>,
        /// The responder's confirmation of the run's key.
        #[serde(with = "serde_bytes")]
        confirm: Vec<u8>,
    },
    /// A hello's last step: the initiator is verified; the responder's [`PeerMeta`], sealed
    /// under the run's key.
    Welcome {
        /// [`super::pake::Session::seal_meta`] of the JSON of [`PeerMeta`].
        #[serde(with = "serde_bytes")]
        meta: Vec<u8>,
    },
    /// The entry, sealed with the key id as associated data (see [`seal_entry`]).
    Entry {
        /// Nonce, then AES-256-GCM ciphertext and tag.
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// Not held (or not fresh enough to be worth sending).
    NotFound,
    /// The coordinator's answer to a claim: fetch it (`granted`), or wait for the live
    /// `claimant`, or pull from these `holders` (peer ids as bytes).
    Claim {
        /// The requester may call GitHub; everyone else asking meanwhile is told to wait.
        granted: bool,
        /// The node that is fetching the key right now.
        #[serde(default)]
        claimant: Option<serde_bytes::ByteBuf>,
        /// Nodes that announced a copy fresh enough for the requester.
        #[serde(default)]
        holders: Vec<serde_bytes::ByteBuf>,
    },
    /// The requester has not proven it holds the secret.
    Denied,
    /// A `Have` was recorded.
    Noted,
    /// The members the answerer knows (connected or heard of), nearest to the requester first.
    Members {
        /// At most the request's limit and [`MAX_MEMBERS_LISTED`].
        members: Vec<ListedMember>,
    },
}

/// What a peer tells verified members about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerMeta {
    /// `RUNNER_NAME`, when known.
    pub runner_name: Option<String>,
    /// The p2p port it listens on.
    pub listen_port: Option<u16>,
    /// The one-way tag of its own token: the member to ask to revalidate entries whose ETag
    /// that token fetched.
    #[serde(default)]
    pub token_tag: Option<String>,
    /// The members it knew of (connected or heard of) when it said this: a member joining
    /// through it learns at its first hello whether the swarm is past the full mesh, before
    /// its own lookups have met enough members to tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members_known: Option<u32>,
}

/// A gossipsub message, sealed with [`GOSSIP_AAD`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Gossip {
    /// "I hold a fresh entry for this key id."
    Announce {
        /// Hex key id.
        key_id: String,
        /// Hex SHA-256 of the body.
        digest: String,
        /// Body size.
        size: u64,
        /// When the holder fetched or revalidated it (ms since the epoch).
        fetched_at_ms: u64,
        /// The holder's TTL, in seconds (requesters judge freshness by their own).
        ttl_secs: u64,
    },
    /// "My claim is over without an entry (GitHub answered an error)."
    Release {
        /// Hex key id.
        key_id: String,
    },
}

/// What is sealed into a gossipsub message: the [`Gossip`] and when its author sent it, so
/// that a recorded message replayed after gossipsub's duplicate cache has forgotten it is
/// recognised (`src/p2p/node/replay.rs`). JSON: the gossip's fields and `sent_at_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stamped {
    /// The author's clock (ms since the epoch), strictly increasing per author.
    pub sent_at_ms: u64,
    /// The message.
    #[serde(flatten)]
    pub gossip: Gossip,
}

impl Gossip {
    /// The announcement that this node holds `entry` under `key_id`.
    pub fn announce(key_id: &KeyId, entry: &Entry) -> Self {
        Gossip::Announce {
            key_id: hex::encode(key_id),
            digest: entry.digest.clone(),
            size: entry.size,
            fetched_at_ms: entry.fetched_at_ms,
            ttl_secs: entry.ttl_secs,
        }
    }
}

/// Seals an entry and its body for the wire: `u32 BE length ‖ entry JSON ‖ body`, key id as AAD.
pub fn seal_entry(keys: &SwarmKeys, key_id: &KeyId, entry: &Entry, body: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(entry).expect("an entry serializes");
    let mut plain = Vec::with_capacity(4 + json.len() + body.len());
    plain.extend_from_slice(&(json.len() as u32).to_be_bytes());
    plain.extend_from_slice(&json);
    plain.extend_from_slice(body);
    keys.seal(key_id, &plain)
}

/// Opens a sealed entry; `Err` says why it must be rejected.
pub fn open_entry(
    keys: &SwarmKeys,
    key_id: &KeyId,
    sealed: &[u8],
) -> Result<(Entry, Vec<u8>), String> {
    let plain = keys
        .open(key_id, sealed)
        .ok_or("the seal does not verify")?;
    if plain.len() < 4 {
        return Err("the sealed entry is too short".into());
    }
    let len = u32::from_be_bytes([plain[0], plain[1], plain[2], plain[3]]) as usize;
    let json = plain.get(4..4 + len).ok_or("the entry header is cut off")?;
    let entry: Entry =
        serde_json::from_slice(json).map_err(|e| format!("the entry header is not valid: {e}"))?;
    Ok((entry, plain[4 + len..].to_vec()))
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use futures::io::Cursor;
    use libp2p::StreamProtocol;
    use libp2p::request_response::Codec as _;
    use libp2p::request_response::cbor::codec::Codec;

    use super::*;

    /// The wire fuzzer's seeds are messages of today's protocol, read by the node's codec.
    #[test]
    fn the_hello_seeds_of_the_wire_fuzzer_decode() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/wire_cbor");
        let protocol = StreamProtocol::new(EXCHANGE_PROTOCOL);
        let read = |name: &str| std::fs::read(seeds.join(name)).unwrap();
        let mut codec = Codec::<Request, Response>::default();
        let request = |codec: &mut Codec<Request, Response>, name| {
            block_on(codec.read_request(&protocol, &mut Cursor::new(read(name)))).unwrap()
        };
        assert!(matches!(
            request(&mut codec, "hello.cbor"),
            Request::Hello { pake } if pake.len() == 33
        ));
        assert!(matches!(
            request(&mut codec, "hello_confirm.cbor"),
            Request::HelloConfirm { confirm, .. } if confirm.len() == 32
        ));
        let response = |codec: &mut Codec<Request, Response>, name| {
            block_on(codec.read_response(&protocol, &mut Cursor::new(read(name)))).unwrap()
        };
        assert!(matches!(
            response(&mut codec, "hello_reply.cbor"),
            Response::HelloReply { pake, confirm } if pake.len() == 33 && confirm.len() == 32
        ));
        assert!(matches!(
            response(&mut codec, "welcome.cbor"),
            Response::Welcome { .. }
        ));
    }

    /// A member's description from before `members_known` still opens, and a new one is read
    /// by a node of either kind.
    #[test]
    fn a_description_without_the_members_known_opens_and_one_with_it_is_read() {
        let old: PeerMeta =
            serde_json::from_str(r#"{"runner_name":"r1","listen_port":4001,"token_tag":null}"#)
                .unwrap();
        assert_eq!(old.members_known, None);
        assert_eq!(old.listen_port, Some(4001));
        let new = PeerMeta {
            members_known: Some(195),
            ..old.clone()
        };
        let json = serde_json::to_string(&new).unwrap();
        let read: PeerMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(read.members_known, Some(195));
        // An older node's reader: the same fields without the new one.
        #[derive(serde::Deserialize)]
        struct Older {
            runner_name: Option<String>,
        }
        let older: Older = serde_json::from_str(&json).unwrap();
        assert_eq!(older.runner_name.as_deref(), Some("r1"));
        assert!(
            !serde_json::to_string(&old)
                .unwrap()
                .contains("members_known")
        );
    }
}
