//! Enrollment tokens as people pass them around: `<id>.<secret>.<ca>`.
//!
//! The id is public (lists, the audit log); the secret is checked against
//! its SHA-256 hash, the only form stored; the last part is the fleet CA's
//! SHA-256 fingerprint (base64url), so a desk can trust the collector on
//! first contact without a copied CA file.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::Digest;

/// A token's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub secret: String,
    /// The CA fingerprint, when the token carries it.
    pub ca: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not an enrollment token (expected ID.SECRET or ID.SECRET.CA-FINGERPRINT)")]
    Format,
    #[error("the token's CA fingerprint is not 32 bytes of base64url")]
    Fingerprint,
}

impl Token {
    /// A new random token for a CA.
    pub fn generate(ca: [u8; 32]) -> Result<Token, crate::pki::PkiError> {
        use ring::rand::SecureRandom;
        let mut id = [0u8; 4];
        let mut secret = [0u8; 24];
        let random = ring::rand::SystemRandom::new();
        random
            .fill(&mut id)
            .and_then(|()| random.fill(&mut secret))
            .map_err(|_| crate::pki::PkiError::Random)?;
        Ok(Token {
            id: crate::pki::hex(&id),
            secret: URL_SAFE_NO_PAD.encode(secret),
            ca: Some(ca),
        })
    }

    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let mut parts = text.trim().split('.');
        let (Some(id), Some(secret)) = (parts.next(), parts.next()) else {
            return Err(TokenError::Format);
        };
        let ca = parts.next();
        let plain = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if parts.next().is_some() || !plain(id, 16) || !plain(secret, 64) {
            return Err(TokenError::Format);
        }
        let ca = match ca {
            None => None,
            Some(c) => Some(
                URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or(TokenError::Fingerprint)?,
            ),
        };
        Ok(Token {
            id: id.to_owned(),
            secret: secret.to_owned(),
            ca,
        })
    }

    /// The secret's hash, as stored.
    pub fn secret_hash(&self) -> String {
        hash(&self.secret)
    }

    /// What a desk sends: id and secret, not the fingerprint.
    pub fn credential(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)?;
        if let Some(ca) = &self.ca {
            write!(f, ".{}", URL_SAFE_NO_PAD.encode(ca))?;
        }
        Ok(())
    }
}

pub fn hash(secret: &str) -> String {
    crate::pki::hex(&sha2::Sha256::digest(secret.as_bytes()))
}

/// Compares two hashes in time independent of where they differ.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_and_its_secret_is_checked_by_hash() {
        let t = Token::generate([7; 32]).unwrap();
        let text = t.to_string();
        assert_eq!(text.split('.').count(), 3);
        let back = Token::parse(&text).unwrap();
        assert_eq!(back, t);
        assert!(same_hash(&back.secret_hash(), &t.secret_hash()));
        let other = Token::generate([7; 32]).unwrap();
        assert!(!same_hash(&other.secret_hash(), &t.secret_hash()));
        // What a desk sends up parses too, without the fingerprint.
        assert_eq!(Token::parse(&t.credential()).unwrap().ca, None);
    }

    #[test]
    fn junk_is_not_a_token() {
        for junk in [
            "",
            "abc",
            "a.b.c.d",
            "a b.c",
            "a.b.!!!",
            "a.b.AAAA",
            &"x".repeat(1000),
        ] {
            assert!(Token::parse(junk).is_err(), "{junk:?}");
        }
    }
}
