//! What a member's seal protects, as the node decodes it: a sealed entry (`open_entry`: length,
//! entry JSON, body), a gossip message and a hello's peer description (sealed under the key of
//! a hello run, `pake::Session`). The input is sealed first, so that the decoding behind the seal
//! is reached; the raw input is also offered as a sealed message, as a stranger would send it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use libp2p::PeerId;
use peercache::p2p::crypto::SwarmKeys;
use peercache::p2p::pake::{Initiator, Session, respond};
use peercache::p2p::protocol::{GOSSIP_AAD, Gossip, PeerMeta, Stamped, open_entry};
use peercache::secret::Secret;

static HELLO: OnceLock<(Session, Session)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let keys = SwarmKeys::derive(&Secret::new("fuzz-swarm-secret-0123456789abcdefghij"), "repository:octo/fuzz");
    let key_id = keys.key_id("GET https://api.github.com/repos/octo/hello");
    // A stranger's bytes: they never open.
    assert!(open_entry(&keys, &key_id, data).is_err());
    // A member's.
    let sealed = keys.seal(&key_id, data);
    let _ = open_entry(&keys, &key_id, &sealed);
    let sealed = keys.seal(GOSSIP_AAD, data);
    let plain = keys
        .open(GOSSIP_AAD, &sealed)
        .expect("a seal opens with its own keys");
    assert_eq!(plain, data);
    let _ = serde_json::from_slice::<Gossip>(&plain);
    let _ = serde_json::from_slice::<Stamped>(&plain);
    // A hello's peer description, between two members (one run for the whole fuzzing: the
    // exchange's scalar multiplications are not what is fuzzed here).
    let (initiator, responder) = HELLO.get_or_init(|| {
        let (a, b) = (PeerId::random(), PeerId::random());
        let (run, hello) = Initiator::start(&keys, &a, &b);
        let (reply, confirm, responder) =
            respond(&keys, &a, &b, &hello).expect("a well-formed hello");
        let initiator = run
            .finish_verified(&reply, &confirm)
            .expect("members agree");
        (initiator, responder)
    });
    assert!(responder.open_meta(data).is_none());
    let plain = responder
        .open_meta(&initiator.seal_meta(data))
        .expect("a seal opens with the run's key");
    assert_eq!(plain, data);
    let _ = serde_json::from_slice::<PeerMeta>(&plain);
});
