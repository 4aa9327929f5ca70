//! A string that must never be printed: tokens and the swarm secret.

use std::fmt;
use std::sync::OnceLock;

/// A secret value whose `Debug` and `Display` never reveal it.
#[derive(Clone)]
pub struct Secret(String, OnceLock<String>);

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.0 == other.0
    }
}

impl Eq for Secret {}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into(), OnceLock::new())
    }

    /// The secret itself; call only where it is sent or used as key material.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The token's one-way tag ([`crate::cache::token_tag`]), worked out on first use and kept:
    /// one request asks for it several times (its key, its admission, its rate-limit figures).
    pub fn tag(&self) -> &str {
        self.1
            .get_or_init(|| crate::cache::token_tag(Some(&self.0)))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The least entropy a swarm secret must carry, in bits.
pub const MIN_SECRET_BITS: f64 = 128.0;

/// Bytes of randomness in a secret made by [`generate`] (256 bits).
pub const GENERATED_BYTES: usize = 32;

/// A new swarm secret: [`GENERATED_BYTES`] random bytes from the OS, standard base64.
pub fn generate() -> String {
    use aes_gcm::aead::OsRng;
    use aes_gcm::aead::rand_core::RngCore;
    use base64::Engine as _;
    let mut bytes = [0u8; GENERATED_BYTES];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An honest upper estimate of the entropy of `value`, in bits, assuming it was drawn at random
/// from the character classes it uses: effective length × log2(size of those classes).
///
/// The effective length discounts what random drawing would almost never produce: a string
/// made of a repeated unit counts only its unit (`abcabcabc` is 3 characters), and a character
/// that continues a run of three equal or consecutive characters (`aaaa`, `1234`, `zyxw`) counts
/// nothing. A string of only hexadecimal digits is counted as hex (16 symbols). No estimate can
/// tell a passphrase of words from random text: make secrets with `peercache secret`.
pub fn entropy_bits(value: &str) -> f64 {
    let chars: Vec<char> = value.chars().collect();
    if chars.is_empty() {
        return 0.0;
    }
    let unit = &chars[..smallest_period(&chars)];
    let mut effective = 0usize;
    for (i, &c) in unit.iter().enumerate() {
        let continues_run = i >= 2 && {
            let (a, b) = (unit[i - 2] as i64, unit[i - 1] as i64);
            let step = b - a;
            step.abs() <= 1 && c as i64 - b == step
        };
        if !continues_run {
            effective += 1;
        }
    }
    effective as f64 * alphabet_size(unit).log2()
}

/// The number of symbols of the character classes `chars` uses.
fn alphabet_size(chars: &[char]) -> f64 {
    if chars.iter().all(char::is_ascii_hexdigit)
        && !(chars.iter().any(char::is_ascii_lowercase)
            && chars.iter().any(char::is_ascii_uppercase))
    {
        return 16.0;
    }
    /// A character class: membership, and how many symbols it has.
    type Class = (fn(&char) -> bool, f64);
    let mut size = 0.0;
    let classes: [Class; 5] = [
        (char::is_ascii_lowercase, 26.0),
        (char::is_ascii_uppercase, 26.0),
        (char::is_ascii_digit, 10.0),
        // The 33 printable ASCII symbols, the space among them.
        (|c| c.is_ascii_punctuation() || *c == ' ', 33.0),
        // Anything else (control characters, non-ASCII): counted generously as 128 more.
        (
            |c| !c.is_ascii_alphanumeric() && !c.is_ascii_punctuation() && *c != ' ',
            128.0,
        ),
    ];
    for (is_in, symbols) in classes {
        if chars.iter().any(is_in) {
            size += symbols;
        }
    }
    size
}

/// The length of the shortest unit whose repetition makes `chars` (its own length when none).
fn smallest_period(chars: &[char]) -> usize {
    // The KMP failure function: the longest proper prefix that is also a suffix.
    let mut fail = vec![0usize; chars.len()];
    let mut k = 0;
    for i in 1..chars.len() {
        while k > 0 && chars[i] != chars[k] {
            k = fail[k - 1];
        }
        if chars[i] == chars[k] {
            k += 1;
        }
        fail[i] = k;
    }
    let period = chars.len() - fail[chars.len() - 1];
    // A partial last repetition (`abcab`) still counts as repeated.
    if period < chars.len() {
        period
    } else {
        chars.len()
    }
}

/// `Err` with the estimate when `value` is too weak to be a swarm secret.
pub fn check_strength(value: &str) -> Result<(), f64> {
    let bits = entropy_bits(value);
    if bits < MIN_SECRET_BITS {
        Err(bits)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_tag_is_the_token_tag_and_equality_ignores_it() {
        let a = Secret::new("Bearer ghp_x");
        assert_eq!(a.tag(), crate::cache::token_tag(Some("Bearer ghp_x")));
        assert_eq!(a.tag(), crate::cache::token_tag(Some("ghp_x")));
        // `b` has not worked its tag out: still the same secret.
        let b = Secret::new("Bearer ghp_x");
        assert_eq!(a, b);
        assert_ne!(a, Secret::new("Bearer ghp_y"));
        assert_eq!(crate::cache::no_token_tag(), crate::cache::token_tag(None));
    }

    #[test]
    fn weak_secrets_are_refused_and_random_ones_pass() {
        for weak in [
            "",
            "s3cret",
            "swarm-secret",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc",
            "0123456789012345678901234567890123456789",
            "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz",
            "Pa55word!Pa55word!Pa55word!Pa55word!",
            // 21 random base64 characters: 126 bits.
            "q3V9kT2mX8pL4wZ7rB1nY",
            // 31 hex digits: 124 bits.
            "3f9a1c7e5b2d8f4a6c0e9b1d7f3a5c2",
        ] {
            assert!(
                check_strength(weak).is_err(),
                "{weak:?} passed: {}",
                entropy_bits(weak)
            );
        }
        for strong in [
            // 22 random base64 characters: 132 bits.
            "q3V9kT2mX8pL4wZ7rB1nYc",
            // `openssl rand -hex 16`: 128 bits.
            "3f9a1c7e5b2d8f4a6c0e9b1d7f3a5c2e",
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        ] {
            assert!(
                check_strength(strong).is_ok(),
                "{strong:?} refused: {}",
                entropy_bits(strong)
            );
        }
        for _ in 0..200 {
            let made = generate();
            assert_eq!(made.len(), 44);
            assert!(
                entropy_bits(&made) >= 200.0,
                "{made}: {}",
                entropy_bits(&made)
            );
        }
    }
}
