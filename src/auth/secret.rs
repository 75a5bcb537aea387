//! Secrets: random ids and secrets, the `sy_<id>_<secret>` key format, SHA-256 digests and their
//! constant-time comparison, and argon2id password hashes.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every gateway key starts with this, so that leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "sy_";
/// Refresh tokens start with this.
pub const REFRESH_PREFIX: &str = "syr_";
/// Public ids: 12 base62 characters (71 bits), enough to be unique without a lookup.
const ID_LEN: usize = 12;
/// Secrets: 43 base62 characters, 256 bits of entropy.
const SECRET_LEN: usize = 43;

/// `n` characters from `[A-Za-z0-9]`, uniformly, from the operating system's generator.
pub fn random_base62(n: usize) -> String {
    Alphanumeric.sample_string(&mut OsRng, n)
}

/// A fresh public id.
pub fn new_id() -> String {
    random_base62(ID_LEN)
}

/// A fresh 256-bit secret.
pub fn new_secret() -> String {
    random_base62(SECRET_LEN)
}

/// `sy_<id>_<secret>`.
pub fn format_key(id: &str, secret: &str) -> String {
    format!("{KEY_PREFIX}{id}_{secret}")
}

/// What may be shown of a key: `sy_<id>`.
pub fn key_prefix(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// Splits `<prefix><id>_<secret>` into id and secret; `None` when it does not have that shape.
pub fn split_token<'a>(token: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let (id, secret) = token.strip_prefix(prefix)?.split_once('_')?;
    let base62 =
        |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric());
    (base62(id) && base62(secret)).then_some((id, secret))
}

/// Lowercase hex SHA-256. Right for 256-bit random secrets: there is nothing to brute-force, so a slow
/// hash would only cost every request time.
pub fn sha256_hex(secret: &str) -> String {
    String::from_utf8_lossy(&sha256_hex_bytes(secret)).into_owned()
}

/// `sha256_hex` on the stack, for the request path's comparison: no allocation, one table lookup a
/// digit (pushing 64 `char`s into a `String` cost ~700 instructions a request).
pub fn sha256_hex_bytes(secret: &str) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = [0u8; 64];
    for (pair, b) in out.chunks_exact_mut(2).zip(digest) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
    out
}

/// Compares two digests without an early exit, so response times say nothing about how much matched.
pub fn digest_eq(a: impl AsRef<[u8]>, b: impl AsRef<[u8]>) -> bool {
    let (a, b) = (a.as_ref(), b.as_ref());
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// An argon2id PHC string for `password` (argon2's defaults: 19 MiB, 2 passes).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("argon2: {e}"))
}

/// Whether `password` matches the PHC string `hash` (constant time inside argon2).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        let (id, secret) = (new_id(), new_secret());
        let key = format_key(&id, &secret);
        assert!(key.starts_with("sy_"));
        assert_eq!(
            split_token(&key, KEY_PREFIX),
            Some((id.as_str(), secret.as_str()))
        );
        assert_eq!(key_prefix(&id).len(), 15);
        assert_ne!(new_secret(), new_secret());
        for bad in [
            "sy_", "sy_abc", "sy__x", "sy_a_", "sy_a_b!c", "xx_a_b", "sy_a_b_c",
        ] {
            assert_eq!(split_token(bad, KEY_PREFIX), None, "{bad}");
        }
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        let h = sha256_hex("abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(digest_eq(&h, sha256_hex("abc")));
        assert!(!digest_eq(&h, sha256_hex("abd")));
        assert!(!digest_eq(&h, "ba"));
        assert_eq!(&sha256_hex_bytes("abc")[..], h.as_bytes());
    }

    #[test]
    fn passwords_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a hash"));
    }
}
