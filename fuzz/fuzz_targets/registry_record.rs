//! A `dir:` registry record (`peer_<id>.json`), as `discover` and the heartbeat read it: JSON
//! into a `PeerRecord`, then every check a reader applies (addresses, expiry).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peercache::registry::PeerRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = serde_json::from_slice::<PeerRecord>(data) {
        let now = record.last_seen;
        let _ = record.clone().validate(now);
        let _ = record.validate(u64::MAX);
    }
});
