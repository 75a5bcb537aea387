//! Encryption of upstream tokens at rest: XChaCha20-Poly1305 with the profile id as associated data,
//! so a sealed token copied under another profile's key fails to open instead of being used there.
//!
//! The 32-byte key comes from `SWITCHYARD_SECRET_KEY` (base64) or, when that is unset, from
//! `data_dir/secret_key`, created with mode 0600 on first use. Losing the key loses the tokens (log in
//! again); it never leaves this module and is never logged.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

/// The variable holding the base64 key.
pub const SECRET_KEY_ENV: &str = "SWITCHYARD_SECRET_KEY";
/// The key file's name in the data dir.
pub const SECRET_KEY_FILE: &str = "secret_key";
/// Version byte in front of every sealed value, so the format can change without guessing.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;

/// Why a key could not be loaded or a value not opened. Messages name files and variables, never key
/// material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{SECRET_KEY_ENV} must be base64 of exactly 32 bytes")]
    BadEnvKey,
    #[error("{path}: must hold base64 of exactly 32 bytes")]
    BadKeyFile { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("sealed value is malformed or from an unknown format version")]
    Malformed,
    #[error("cannot decrypt: wrong key, or sealed for another profile")]
    Decrypt,
    #[error("cannot encrypt")]
    Encrypt,
}

/// Seals and opens tokens. Holds the cipher only (the key stays inside it).
pub struct Vault {
    cipher: XChaCha20Poly1305,
}

impl Vault {
    /// The key from `SWITCHYARD_SECRET_KEY`, or else from (or newly into) `data_dir/secret_key`.
    pub fn open(data_dir: &Path) -> Result<Vault, VaultError> {
        let from_env = std::env::var(SECRET_KEY_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty());
        let key = match from_env {
            Some(v) => decode_key(&v).ok_or(VaultError::BadEnvKey)?,
            None => key_file(data_dir)?,
        };
        Ok(Vault::with_key(&key))
    }

    /// A vault with an explicit key.
    pub fn with_key(key: &[u8; 32]) -> Vault {
        Vault {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// `plaintext` encrypted for `profile`: version byte, random 24-byte nonce, ciphertext and tag.
    pub fn seal(&self, profile: &str, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: profile.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Encrypt)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext of a value `seal`ed for `profile` with this key.
    pub fn open_sealed(&self, profile: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        let (version, rest) = sealed.split_first().ok_or(VaultError::Malformed)?;
        if *version != FORMAT_V1 || rest.len() < NONCE_LEN {
            return Err(VaultError::Malformed);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: profile.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Decrypt)
    }
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    STANDARD.decode(text.trim()).ok()?.try_into().ok()
}

fn key_file(data_dir: &Path) -> Result<[u8; 32], VaultError> {
    let path = data_dir.join(SECRET_KEY_FILE);
    let shown = || path.display().to_string();
    match std::fs::read_to_string(&path) {
        Ok(text) => decode_key(&text).ok_or_else(|| VaultError::BadKeyFile { path: shown() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::OpenOptionsExt;
            let io = |source| VaultError::Io {
                path: shown(),
                source,
            };
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            // create_new: two processes racing here must not overwrite each other's key.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            file.write_all(STANDARD.encode(key).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io)?;
            tracing::info!(path = %path.display(), "created the token encryption key");
            Ok(key)
        }
        Err(source) => Err(VaultError::Io {
            path: shown(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_only_for_their_profile_and_key() {
        let vault = Vault::with_key(&[7; 32]);
        let token = b"ya29.super-secret-access-token";
        let sealed = vault.seal("work", token).unwrap();
        assert!(!sealed.windows(token.len()).any(|w| w == token));
        assert_eq!(vault.open_sealed("work", &sealed).unwrap(), token);
        // Same plaintext, fresh nonce.
        assert_ne!(vault.seal("work", token).unwrap(), sealed);
        assert!(matches!(
            vault.open_sealed("home", &sealed),
            Err(VaultError::Decrypt)
        ));
        assert!(matches!(
            Vault::with_key(&[8; 32]).open_sealed("work", &sealed),
            Err(VaultError::Decrypt)
        ));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(vault.open_sealed("work", &tampered).is_err());
        assert!(matches!(
            vault.open_sealed("work", &[2, 0, 0]),
            Err(VaultError::Malformed)
        ));
        assert!(matches!(
            vault.open_sealed("work", &[]),
            Err(VaultError::Malformed)
        ));
    }

    #[test]
    fn the_key_file_is_created_once_with_mode_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let key = key_file(&data).unwrap();
        let path = data.join(SECRET_KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(key_file(&data).unwrap(), key);
        let sealed = Vault::with_key(&key).seal("p", b"t").unwrap();
        assert_eq!(
            Vault::with_key(&key_file(&data).unwrap())
                .open_sealed("p", &sealed)
                .unwrap(),
            b"t"
        );
        std::fs::write(&path, "too short").unwrap();
        assert!(matches!(
            key_file(&data),
            Err(VaultError::BadKeyFile { .. })
        ));
    }

    #[test]
    fn env_keys_must_be_32_bytes_of_base64() {
        assert_eq!(decode_key(&STANDARD.encode([1u8; 32])), Some([1; 32]));
        assert_eq!(
            decode_key(&format!(" {}\n", STANDARD.encode([1u8; 32]))),
            Some([1; 32])
        );
        assert_eq!(decode_key(&STANDARD.encode([1u8; 31])), None);
        assert_eq!(decode_key("not base64!"), None);
    }
}
