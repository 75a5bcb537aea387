//! PKCE (RFC 7636, S256 only) and the `state` parameter of the authorization-code flow.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The secret half of one login attempt: the code verifier, sent only to the token endpoint, and the
/// `state` that the callback must echo.
pub struct PkceSession {
    /// 43 characters of base64url (32 random bytes): the RFC's minimum length, the most entropy per char.
    pub code_verifier: String,
    /// 22 characters of base64url (16 random bytes); compared in constant time on the callback.
    pub state: String,
}

impl PkceSession {
    /// Fresh random material from the OS generator.
    pub fn new() -> PkceSession {
        PkceSession {
            code_verifier: random_b64url(32),
            state: random_b64url(16),
        }
    }

    /// `BASE64URL(SHA256(code_verifier))`, sent on the authorize URL with `code_challenge_method=S256`.
    pub fn code_challenge(&self) -> String {
        s256_challenge(&self.code_verifier)
    }

    /// Whether the `state` a callback carried is ours.
    pub fn state_matches(&self, returned: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.state.as_bytes().ct_eq(returned.as_bytes()).into()
    }
}

impl Default for PkceSession {
    fn default() -> Self {
        PkceSession::new()
    }
}

/// The S256 challenge of a verifier.
pub fn s256_challenge(code_verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(code_verifier.as_bytes()))
}

fn random_b64url(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_the_rfc_7636_example() {
        // RFC 7636, appendix B.
        assert_eq!(
            s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn sessions_are_random_and_check_their_state() {
        let a = PkceSession::new();
        let b = PkceSession::new();
        assert_ne!(a.code_verifier, b.code_verifier);
        assert_ne!(a.state, b.state);
        assert_eq!(a.code_verifier.len(), 43);
        assert!(a
            .code_verifier
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert!(a.state_matches(&a.state.clone()));
        assert!(!a.state_matches(&b.state));
        assert!(!a.state_matches(""));
        assert_eq!(a.code_challenge(), s256_challenge(&a.code_verifier));
    }
}
