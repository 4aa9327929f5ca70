//! The hello's key exchange: SPAKE2 (RustCrypto's `spake2`, Ed25519 group) with key
//! confirmation, so that a peer proves it holds the swarm secret without sending anything a
//! stranger could test guesses of the secret against.
//!
//! One run per direction, over the exchange protocol (`docs/protocol.md`, "Hello"):
//!
//! 1. initiator → responder: `Hello { pake: X }`
//! 2. responder → initiator: `HelloReply { pake: Y, confirm: MAC(k_r, transcript) }`
//! 3. initiator → responder: `HelloConfirm { confirm: MAC(k_i, transcript), meta: sealed }`
//! 4. responder → initiator: `Welcome { meta: sealed }`
//!
//! The password is an HKDF output of the secret ([`SwarmKeys::pake_password`]); the SPAKE2
//! identities are both libp2p peer ids (authenticated by noise), so a stranger that relays a
//! member's messages to another member ends with keys that match neither. A stranger that
//! guesses gets one online guess per run: the responder's confirmation is keyed by the exchange's
//! key, which it cannot compute for any password without the responder's secret scalar.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use libp2p::PeerId;
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};

use super::crypto::{SwarmKeys, cipher, open_with, seal_with};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a SPAKE2 message: a side byte and a compressed Ed25519 point.
pub const PAKE_MESSAGE_LEN: usize = 33;

/// Why a run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer's SPAKE2 message is not one (wrong length, side or point).
    Malformed,
    /// The peer's confirmation does not match: it does not hold the secret (or a stranger
    /// relayed another peer's messages).
    Mismatch,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Malformed => "its key-exchange message is malformed",
            Refusal::Mismatch => "its key confirmation does not match the swarm secret",
        })
    }
}

/// The initiator's half of a run, waiting for the responder's `HelloReply`.
pub struct Initiator {
    run: Spake2<Ed25519Group>,
    hello: Vec<u8>,
}

impl Initiator {
    /// Starts a run from `me` to `peer`; the returned bytes are the `Hello`'s `pake`.
    pub fn start(keys: &SwarmKeys, me: &PeerId, peer: &PeerId) -> (Initiator, Vec<u8>) {
        let (run, hello) = Spake2::<Ed25519Group>::start_a(
            &Password::new(keys.pake_password()),
            &Identity::new(&me.to_bytes()),
            &Identity::new(&peer.to_bytes()),
        );
        (
            Initiator {
                run,
                hello: hello.clone(),
            },
            hello,
        )
    }

    /// Finishes with the responder's message. The session is not yet a proof of anything:
    /// check the reply's confirmation with [`Session::verify_responder`] first.
    pub fn finish(self, reply: &[u8]) -> Result<Session, Refusal> {
        let key = self.run.finish(reply).map_err(|_| Refusal::Malformed)?;
        Ok(Session::new(&key, &self.hello, reply))
    }

    /// [`Initiator::finish`], then [`Session::verify_responder`]: `Ok` means the responder
    /// holds the secret.
    pub fn finish_verified(self, reply: &[u8], confirm: &[u8]) -> Result<Session, Refusal> {
        let session = self.finish(reply)?;
        if session.verify_responder(confirm) {
            Ok(session)
        } else {
            Err(Refusal::Mismatch)
        }
    }
}

/// The responder's half: answers `hello` from `initiator`. Returns the `HelloReply`'s `pake`
/// and `confirm`, and the session that checks the initiator's `HelloConfirm`.
///
/// The responder cannot tell a wrong password from a right one here (that is the point): the
/// initiator is verified only by its confirmation, [`Session::verify_initiator`].
pub fn respond(
    keys: &SwarmKeys,
    initiator: &PeerId,
    me: &PeerId,
    hello: &[u8],
) -> Result<(Vec<u8>, Vec<u8>, Session), Refusal> {
    let (run, reply) = Spake2::<Ed25519Group>::start_b(
        &Password::new(keys.pake_password()),
        &Identity::new(&initiator.to_bytes()),
        &Identity::new(&me.to_bytes()),
    );
    let key = run.finish(hello).map_err(|_| Refusal::Malformed)?;
    let session = Session::new(&key, hello, &reply);
    let confirm = session.confirm(RESPONDER);
    Ok((reply, confirm, session))
}

const INITIATOR: &[u8] = b"initiator";
const RESPONDER: &[u8] = b"responder";
/// AAD of the peer descriptions sealed under a session.
const META_AAD: &[u8] = b"peercache/v1/hello-meta";

/// What both sides of a successful run share: confirmation keys and a seal for what they tell
/// each other about themselves.
pub struct Session {
    initiator_confirm: [u8; 32],
    responder_confirm: [u8; 32],
    transcript: Vec<u8>,
    /// The key the peer descriptions are sealed with (a cipher is made when needed: its key
    /// schedule is a kilobyte, and a session is kept for a few seconds at most).
    seal_key: [u8; 32],
}

impl Session {
    fn new(key: &[u8], hello: &[u8], reply: &[u8]) -> Session {
        let hk = Hkdf::<Sha256>::new(Some(b"peercache/v1/hello-session"), key);
        let expand = |info: &[u8]| {
            let mut out = [0u8; 32];
            hk.expand(info, &mut out)
                .expect("32 bytes is a valid HKDF-SHA256 length");
            out
        };
        let mut transcript = Vec::with_capacity(hello.len() + reply.len());
        transcript.extend_from_slice(hello);
        transcript.extend_from_slice(reply);
        Session {
            initiator_confirm: expand(b"confirm initiator"),
            responder_confirm: expand(b"confirm responder"),
            transcript,
            seal_key: expand(b"seal meta"),
        }
    }

    fn mac(&self, role: &[u8]) -> HmacSha256 {
        let key = if role == INITIATOR {
            &self.initiator_confirm
        } else {
            &self.responder_confirm
        };
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(b"peercache/v1/hello-confirm\0");
        mac.update(role);
        mac.update(b"\0");
        mac.update(&self.transcript);
        mac
    }

    fn confirm(&self, role: &[u8]) -> Vec<u8> {
        self.mac(role).finalize().into_bytes().to_vec()
    }

    fn verify(&self, role: &[u8], confirm: &[u8]) -> bool {
        self.mac(role).verify_slice(confirm).is_ok()
    }

    /// The `HelloConfirm`'s `confirm`.
    pub fn initiator_confirm(&self) -> Vec<u8> {
        self.confirm(INITIATOR)
    }

    /// Checks, in constant time, the initiator's confirmation: `true` means it holds the secret.
    pub fn verify_initiator(&self, confirm: &[u8]) -> bool {
        self.verify(INITIATOR, confirm)
    }

    /// Checks, in constant time, the responder's confirmation: `true` means it holds the secret.
    pub fn verify_responder(&self, confirm: &[u8]) -> bool {
        self.verify(RESPONDER, confirm)
    }

    /// Seals a peer description for the other side of this run only.
    pub fn seal_meta(&self, meta: &[u8]) -> Vec<u8> {
        seal_with(&cipher(&self.seal_key), META_AAD, meta)
    }

    /// Opens what the other side sealed with [`Session::seal_meta`].
    pub fn open_meta(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&cipher(&self.seal_key), META_AAD, sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn keys(secret: &str) -> SwarmKeys {
        SwarmKeys::derive(&Secret::new(secret), "repository:octo/pake")
    }

    /// A full run; `Ok` holds both sides' sessions.
    fn run(
        initiator: (&SwarmKeys, PeerId),
        responder: (&SwarmKeys, PeerId),
    ) -> Result<(Session, Session), Refusal> {
        let (start, hello) = Initiator::start(initiator.0, &initiator.1, &responder.1);
        let (reply, confirm, answered) = respond(responder.0, &initiator.1, &responder.1, &hello)?;
        let session = start.finish_verified(&reply, &confirm)?;
        if answered.verify_initiator(&session.initiator_confirm()) {
            Ok((session, answered))
        } else {
            Err(Refusal::Mismatch)
        }
    }

    #[test]
    fn the_right_password_gives_both_sides_one_key() {
        let keys = keys("the right secret");
        let (a, b) = (PeerId::random(), PeerId::random());
        let (initiator, responder) = run((&keys, a), (&keys, b)).expect("members agree");
        let sealed = initiator.seal_meta(b"{\"runner_name\":\"a\"}");
        assert_eq!(
            responder.open_meta(&sealed).as_deref(),
            Some(&b"{\"runner_name\":\"a\"}"[..])
        );
        assert_eq!(
            initiator.open_meta(&responder.seal_meta(b"b")).as_deref(),
            Some(&b"b"[..])
        );
        assert_eq!(
            keys.open(META_AAD, &sealed),
            None,
            "the meta is sealed under the run's key, not the swarm's"
        );
        // Two runs of the same pair share nothing.
        let (again, _) = run((&keys, a), (&keys, b)).unwrap();
        assert!(again.open_meta(&sealed).is_none());
    }

    #[test]
    fn a_wrong_password_mismatches_on_both_sides() {
        let (member, guess) = (keys("the right secret"), keys("a wrong guess"));
        let (a, b) = (PeerId::random(), PeerId::random());
        // The guesser as initiator: the responder's confirmation does not verify for it…
        let (start, hello) = Initiator::start(&guess, &a, &b);
        let (reply, confirm, answered) = respond(&member, &a, &b, &hello).unwrap();
        let guessed = start.finish(&reply).unwrap();
        assert!(!guessed.verify_responder(&confirm));
        // …and what it confirms with is refused.
        assert!(!answered.verify_initiator(&guessed.initiator_confirm()));
        assert!(answered.open_meta(&guessed.seal_meta(b"{}")).is_none());
        // A fresh run with the right password cannot check the reply either (its scalar is
        // not the one the guess was sent with): nothing received verifies offline.
        let (fresh, _) = Initiator::start(&member, &a, &b);
        assert_eq!(
            fresh.finish_verified(&reply, &confirm).err(),
            Some(Refusal::Mismatch)
        );
        // Both ways round.
        assert_eq!(
            run((&member, a), (&guess, b)).err(),
            Some(Refusal::Mismatch)
        );
        assert_eq!(
            run((&guess, a), (&member, b)).err(),
            Some(Refusal::Mismatch)
        );
        // The same secret in another scope is another password.
        let other_scope = SwarmKeys::derive(&Secret::new("the right secret"), "repository:o/x");
        assert_eq!(
            run((&member, a), (&other_scope, b)).err(),
            Some(Refusal::Mismatch)
        );
    }

    #[test]
    fn a_stranger_relaying_between_two_members_gets_mismatched_keys() {
        let keys = keys("the right secret");
        let (alice, bob, mallory) = (PeerId::random(), PeerId::random(), PeerId::random());
        // Alice says hello to mallory; mallory passes it on to bob as its own hello.
        let (alice_run, hello) = Initiator::start(&keys, &alice, &mallory);
        let (reply, confirm, bob_session) = respond(&keys, &mallory, &bob, &hello).unwrap();
        // Bob's reply, relayed back, does not convince alice…
        let alice_session = alice_run.finish(&reply).unwrap();
        assert!(!alice_session.verify_responder(&confirm));
        // …and alice's confirmation, relayed to bob, does not convince bob that mallory is a
        // member, nor does mallory learn the meta alice seals.
        assert!(!bob_session.verify_initiator(&alice_session.initiator_confirm()));
        assert!(
            bob_session
                .open_meta(&alice_session.seal_meta(b"{}"))
                .is_none()
        );
        // Control: the same messages between alice and bob themselves agree.
        let (alice_run, hello) = Initiator::start(&keys, &alice, &bob);
        let (reply, confirm, bob_session) = respond(&keys, &alice, &bob, &hello).unwrap();
        let alice_session = alice_run.finish_verified(&reply, &confirm).unwrap();
        assert!(bob_session.verify_initiator(&alice_session.initiator_confirm()));
    }

    #[test]
    fn reflected_and_malformed_messages_are_refused() {
        let keys = keys("the right secret");
        let (a, b) = (PeerId::random(), PeerId::random());
        let (start, hello) = Initiator::start(&keys, &a, &b);
        assert_eq!(hello.len(), PAKE_MESSAGE_LEN);
        // Its own message reflected back: the side byte is wrong.
        assert_eq!(start.finish(&hello).err(), Some(Refusal::Malformed));
        assert_eq!(
            respond(&keys, &a, &b, &[0x41; 5]).err(),
            Some(Refusal::Malformed)
        );
        assert_eq!(respond(&keys, &a, &b, &[]).err(), Some(Refusal::Malformed));
        // A responder's message sent as a hello.
        let (reply, _, _) = respond(&keys, &a, &b, &hello).unwrap();
        assert_eq!(
            respond(&keys, &a, &b, &reply).err(),
            Some(Refusal::Malformed)
        );
        // The direction matters: a run from a to b is no run from b to a.
        let (start, hello) = Initiator::start(&keys, &a, &b);
        let (reply, confirm, _) = respond(&keys, &b, &a, &hello).unwrap();
        assert_eq!(
            start.finish_verified(&reply, &confirm).err(),
            Some(Refusal::Mismatch)
        );
    }
}
