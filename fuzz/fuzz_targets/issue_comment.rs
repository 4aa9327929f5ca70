//! An `issue:` registry comment: the raw body as anyone may write it, and the same text as a
//! member would sign it (so that the record parsing behind the MAC is reached too).
#![no_main]

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use peercache::registry::issue::{MARKER_PREFIX, Parsed, parse_comment, registry_key};
use peercache::secret::Secret;
use sha2::Sha256;

fuzz_target!(|data: &[u8]| {
    let key = registry_key(&Secret::new("fuzz-swarm-secret-0123456789abcdefghij"));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_comment(&key, text);
    // The comment a member would write around this record text: its MAC must verify, whatever
    // the text (the constants below are docs/registry.md's).
    if text.contains('\n') || text.contains("```") {
        return;
    }
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
    mac.update(b"peercache/v1/registry-record\0");
    mac.update(text.as_bytes());
    let tag: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let body = format!(
        "{MARKER_PREFIX}12D3KooWfuzz -->\nsigned\n\n```json\n{{\"record\":{text},\"mac\":\"{tag}\"}}\n```\n"
    );
    if body.len() <= 65_536 {
        assert!(
            !matches!(parse_comment(&key, &body), Parsed::Forged),
            "a comment signed with the swarm's key was taken for a forgery"
        );
    }
});
