//! The swarm's keys, all derived from the shared secret and the sharing scope with HKDF-SHA256
//! (the secret is the input key material; the scope goes into the salt, so two scopes of one
//! secret are two swarms that cannot read each other's key ids, seals or gossip).
//!
//! | purpose      | derivation (HKDF info)         | use                                              |
//! |--------------|--------------------------------|--------------------------------------------------|
//! | membership   | `peercache/v1/pake`            | the SPAKE2 password of the hello ([`super::pake`]) |
//! | key ids      | `peercache/v1/key-id`          | HMAC-SHA256 of a cache key: the id on the wire   |
//! | sealing      | `peercache/v1/seal`            | AES-256-GCM of entries and announcements         |
//!
//! Separate keys per purpose mean a value computed for one (a key id, a seal) is never valid
//! as another. Nothing derived here reaches a peer before it has passed the hello: the
//! gossipsub topic is a constant ([`super::protocol::ANNOUNCE_TOPIC`]), and the hello is a
//! password-authenticated key exchange, so a stranger holds nothing to test guesses against.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
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
    pake_password: [u8; 32],
    key_id: [u8; 32],
    seal: Aes256Gcm,
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
        SwarmKeys {
            pake_password: expand(b"peercache/v1/pake"),
            key_id: expand(b"peercache/v1/key-id"),
            seal: cipher(&expand(b"peercache/v1/seal")),
        }
    }

    /// The hello's SPAKE2 password: never sent, only run through the key exchange.
    pub(super) fn pake_password(&self) -> &[u8] {
        &self.pake_password
    }

    /// The wire id of a canonical cache key.
    pub fn key_id(&self, canonical_key: &str) -> KeyId {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.key_id).expect("HMAC takes any key length");
        mac.update(canonical_key.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Seals `plaintext` with a fresh random nonce; `aad` is bound but not encrypted.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.seal, aad, plaintext)
    }

    /// Opens a sealed message; `None` when it was not sealed by the swarm for this `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.seal, aad, sealed)
    }
}

/// The AES-256-GCM cipher of a 32-byte key.
pub(super) fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
}

/// Seals `plaintext` under `cipher` with a fresh random nonce: `nonce ‖ ciphertext ‖ tag`.
pub(super) fn seal_with(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ciphertext = cipher
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

/// Opens what [`seal_with`] sealed under the same cipher and `aad`; `None` otherwise.
pub(super) fn open_with(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + 16 {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pake_password_depends_on_the_secret_and_is_no_other_key() {
        let keys = SwarmKeys::derive(&Secret::new("s3cret"), "");
        let other = SwarmKeys::derive(&Secret::new("other"), "");
        assert_ne!(keys.pake_password(), other.pake_password());
        assert_eq!(
            keys.pake_password(),
            SwarmKeys::derive(&Secret::new("s3cret"), "").pake_password()
        );
        assert_ne!(keys.pake_password(), &keys.key_id[..]);
        assert_ne!(
            keys.pake_password(),
            Secret::new("s3cret").expose().as_bytes()
        );
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
    fn key_ids_depend_on_the_secret() {
        let a = SwarmKeys::derive(&Secret::new("a"), "");
        let b = SwarmKeys::derive(&Secret::new("b"), "");
        assert_ne!(a.key_id("GET x"), b.key_id("GET x"));
        assert_eq!(a.key_id("GET x"), a.key_id("GET x"));
    }

    #[test]
    fn every_key_depends_on_the_scope() {
        let secret = Secret::new("one secret for both scopes");
        let repo = SwarmKeys::derive(&secret, "octo/repo");
        let owner = SwarmKeys::derive(&secret, "octo");
        assert_ne!(repo.key_id("GET x"), owner.key_id("GET x"));
        assert_ne!(repo.pake_password(), owner.pake_password());
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
