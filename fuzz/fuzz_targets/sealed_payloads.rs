//! What a member's seal protects, as the node decodes it: a sealed entry (`open_entry`: length,
//! entry JSON, body), a gossip message and a hello's peer description. The input is sealed with
//! the swarm's keys first, so that the decoding behind the seal is reached; the raw input is also
//! offered as a sealed message, as a stranger would send it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peercache::p2p::crypto::SwarmKeys;
use peercache::p2p::protocol::{GOSSIP_AAD, Gossip, HELLO_AAD, PeerMeta, Stamped, open_entry};
use peercache::secret::Secret;

fuzz_target!(|data: &[u8]| {
    let keys = SwarmKeys::derive(&Secret::new("fuzz-swarm-secret-0123456789abcdefghij"), "repository:octo/fuzz");
    let key_id = keys.key_id("GET https://api.github.com/repos/octo/hello");
    // A stranger's bytes: they never open.
    assert!(open_entry(&keys, &key_id, data).is_err());
    // A member's.
    let sealed = keys.seal(&key_id, data);
    let _ = open_entry(&keys, &key_id, &sealed);
    for aad in [GOSSIP_AAD, HELLO_AAD] {
        let sealed = keys.seal(aad, data);
        let plain = keys
            .open(aad, &sealed)
            .expect("a seal opens with its own keys");
        assert_eq!(plain, data);
        let _ = serde_json::from_slice::<Gossip>(&plain);
        let _ = serde_json::from_slice::<Stamped>(&plain);
        let _ = serde_json::from_slice::<PeerMeta>(&plain);
    }
});
