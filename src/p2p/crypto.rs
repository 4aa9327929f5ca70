//! The swarm's keys, all derived from the shared secret and the sharing scope with HKDF-SHA256
//! (the secret is the input key material; the scope goes into the salt, so two scopes of one
//! secret are two swarms that cannot read each other's key ids, seals or gossip).
//!
//! | purpose      | derivation (HKDF info)         | use                                              |
//! |--------------|--------------------------------|--------------------------------------------------|
//! | membership   | `peercache/v1/auth`            | HMAC-SHA256 proof over both peer ids             |
//! | key ids      | `peercache/v1/key-id`          | HMAC-SHA256 of a cache key: the id on the wire   |
//! | sealing      | `peercache/v1/seal`            | AES-256-GCM of entries and announcements         |
//! | topic        | `peercache/v1/topic`           | the gossipsub topic name, so other swarms differ |
//!
//! Separate keys per purpose mean a value computed for one (a key id, a proof) is never valid
//! as another.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use libp2p::PeerId;
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// A key id: HMAC-SHA256 of a canonical cache key under the swarm's key-id key.
pub type KeyId = [u8; 32];

/// Bytes of the random nonce that starts every sealed message.
const NONCE_LEN: usize = 12;

/// Keys derived from the swarm secret.
#[derive(Clone)]
pub struct SwarmKeys {
    auth: [u8; 32],
    key_id: [u8; 32],
    seal: Aes256Gcm,
    topic: String,
}

impl SwarmKeys {
    /// Derives every key from the secret and the scope (`""` for the unscoped swarm).
    pub fn derive(secret: &Secret, scope: &str) -> SwarmKeys {
        // Length-prefixed so that no (prefix, scope) pair can collide with another.
        let mut salt = b"peercache swarm v1".to_vec();
        salt.extend_from_slice(&(scope.len() as u64).to_be_bytes());
        salt.extend_from_slice(scope.as_bytes());
        let hk = Hkdf::<Sha256>::new(Some(&salt), secret.expose().as_bytes());
        let expand = |info: &[u8]| {
            let mut out = [0u8; 32];
            hk.expand(info, &mut out)
                .expect("32 bytes is a valid HKDF-SHA256 length");
            out
        };
        let seal_key = expand(b"peercache/v1/seal");
        let topic = expand(b"peercache/v1/topic");
        SwarmKeys {
            auth: expand(b"peercache/v1/auth"),
            key_id: expand(b"peercache/v1/key-id"),
            seal: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&seal_key)),
            topic: format!("peercache/v1/{}", hex::encode(&topic[..12])),
        }
    }

    /// The proof that `from` holds the secret, addressed to `to`.
    pub fn proof(&self, from: &PeerId, to: &PeerId) -> Vec<u8> {
        self.proof_mac(from, to).finalize().into_bytes().to_vec()
    }

    /// Checks, in constant time, a proof that `from` holds the secret, addressed to `to`.
    pub fn verify_proof(&self, from: &PeerId, to: &PeerId, proof: &[u8]) -> bool {
        self.proof_mac(from, to).verify_slice(proof).is_ok()
    }

    fn proof_mac(&self, from: &PeerId, to: &PeerId) -> HmacSha256 {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.auth).expect("HMAC takes any key length");
        mac.update(b"peercache/v1/hello\0");
        mac.update(&from.to_bytes());
        mac.update(b"\0");
        mac.update(&to.to_bytes());
        mac
    }

    /// The wire id of a canonical cache key.
    pub fn key_id(&self, canonical_key: &str) -> KeyId {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.key_id).expect("HMAC takes any key length");
        mac.update(canonical_key.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The gossipsub topic of this swarm.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Seals `plaintext` with a fresh random nonce; `aad` is bound but not encrypted.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .seal
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens a sealed message; `None` when it was not sealed by the swarm for this `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.seal
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_both_peers_and_the_secret() {
        let keys = SwarmKeys::derive(&Secret::new("s3cret"), "");
        let other = SwarmKeys::derive(&Secret::new("other"), "");
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let proof = keys.proof(&a, &b);
        assert!(keys.verify_proof(&a, &b, &proof));
        assert!(!keys.verify_proof(&b, &a, &proof), "direction matters");
        assert!(
            !keys.verify_proof(&a, &c, &proof),
            "a proof for b is no proof for c"
        );
        assert!(
            !other.verify_proof(&a, &b, &proof),
            "another secret cannot verify it"
        );
        assert!(!keys.verify_proof(&a, &b, &other.proof(&a, &b)));
    }

    #[test]
    fn seals_need_the_secret_and_the_same_aad() {
        let keys = SwarmKeys::derive(&Secret::new("s3cret"), "");
        let sealed = keys.seal(b"id", b"body");
        assert_eq!(keys.open(b"id", &sealed).as_deref(), Some(&b"body"[..]));
        assert!(keys.open(b"other id", &sealed).is_none());
        assert!(
            SwarmKeys::derive(&Secret::new("x"), "")
                .open(b"id", &sealed)
                .is_none()
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(keys.open(b"id", &tampered).is_none());
        assert_ne!(
            keys.seal(b"id", b"body"),
            sealed,
            "a fresh nonce every time"
        );
    }

    #[test]
    fn key_ids_and_topics_depend_on_the_secret() {
        let a = SwarmKeys::derive(&Secret::new("a"), "");
        let b = SwarmKeys::derive(&Secret::new("b"), "");
        assert_ne!(a.key_id("GET x"), b.key_id("GET x"));
        assert_ne!(a.topic(), b.topic());
        assert_eq!(a.key_id("GET x"), a.key_id("GET x"));
    }

    #[test]
    fn every_key_depends_on_the_scope() {
        let secret = Secret::new("one secret for both scopes");
        let repo = SwarmKeys::derive(&secret, "octo/repo");
        let owner = SwarmKeys::derive(&secret, "octo");
        let (a, b) = (PeerId::random(), PeerId::random());
        assert_ne!(repo.key_id("GET x"), owner.key_id("GET x"));
        assert_ne!(repo.topic(), owner.topic());
        assert!(!owner.verify_proof(&a, &b, &repo.proof(&a, &b)));
        assert!(owner.open(b"id", &repo.seal(b"id", b"body")).is_none());
        assert_ne!(
            SwarmKeys::derive(&secret, "").key_id("GET x"),
            repo.key_id("GET x")
        );
        assert_eq!(
            repo.key_id("GET x"),
            SwarmKeys::derive(&secret, "octo/repo").key_id("GET x")
        );
    }
}
