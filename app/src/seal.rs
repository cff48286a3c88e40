//! Sealing secrets that events must carry (an assistant's engine key): AES-256-GCM with a key
//! derived from the platform's sealing secret, so the event log, the stream, the read models
//! and the webhooks never hold them in clear, and replaying the log still yields them to the
//! process that needs them (the media part, to call the model).
//!
//! Sealed form: `v1:` + base64url(nonce (12 bytes) || ciphertext || tag). The AAD binds a
//! sealed value to what it belongs to (the assistant's id): a value copied onto another
//! resource does not open.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

const PREFIX: &str = "v1:";

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Not of the sealed form.
    #[error("not a sealed value")]
    Malformed,
    /// Sealed with another key, for another resource, or altered.
    #[error("the sealed value does not open with this platform's key")]
    Open,
    /// The system's random source failed.
    #[error("no randomness for the nonce")]
    Random,
}

/// Seals and opens secrets with the platform's key.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

impl Sealer {
    /// A sealer keyed by `secret` (the platform secret `seal_key`).
    pub fn new(secret: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"vbin-seal-v1\0");
        h.update(secret.as_bytes());
        let key = UnboundKey::new(&AES_256_GCM, &h.finalize()).expect("a 32-byte key");
        Self {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        }
    }

    /// `plain` sealed for `owner` (its id).
    pub fn seal(&self, owner: &[u8], plain: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut buf = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(owner),
                &mut buf,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        ))
    }

    /// The secret `sealed` holds for `owner`.
    pub fn open(&self, owner: &[u8], sealed: &str) -> Result<String, SealError> {
        let raw = sealed.strip_prefix(PREFIX).ok_or(SealError::Malformed)?;
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| SealError::Malformed)?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Malformed);
        }
        let nonce = Nonce::try_assume_unique_for_key(&bytes[..NONCE_LEN])
            .map_err(|_| SealError::Malformed)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(owner), &mut bytes[NONCE_LEN..])
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_for_its_owner_and_key() {
        let s = Sealer::new("platform-secret");
        let sealed = s.seal(b"ai-1", "sk-live-123").unwrap();
        assert!(sealed.starts_with("v1:") && !sealed.contains("sk-live"));
        assert_ne!(
            sealed,
            s.seal(b"ai-1", "sk-live-123").unwrap(),
            "fresh nonce"
        );
        assert_eq!(s.open(b"ai-1", &sealed).unwrap(), "sk-live-123");
        assert!(matches!(s.open(b"ai-2", &sealed), Err(SealError::Open)));
        let other = Sealer::new("another-platform");
        assert!(matches!(other.open(b"ai-1", &sealed), Err(SealError::Open)));
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert!(s.open(b"ai-1", &altered).is_err());
        assert!(matches!(
            s.open(b"ai-1", "plain"),
            Err(SealError::Malformed)
        ));
        assert!(matches!(
            s.open(b"ai-1", "v1:AAAA"),
            Err(SealError::Malformed)
        ));
    }
}
