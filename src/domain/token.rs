//! Bearer tokens: only their SHA-256 is ever stored.
use sha2::{Digest, Sha256};

/// Shortest token accepted from configuration or the admin API.
pub const MIN_TOKEN_LEN: usize = 16;

/// The stored form of a token. Tokens are long random strings, so a fast hash is
/// enough: there is nothing to brute-force that would not take longer than guessing.
pub fn hash_token(token: &str) -> String {
    hex::encode(token_digest(token))
}

/// The SHA-256 of a token as bytes (what [`hash_token`] writes in hex): a
/// cache key that costs no hex encoding and no allocation.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token (URL-safe, 32 hex characters of entropy from the OS RNG).
pub fn generate_token() -> String {
    use rand::Rng;
    let bytes: [u8; 20] = rand::rng().random();
    format!("sb_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_not_the_token() {
        let t = generate_token();
        assert_eq!(hash_token(&t), hash_token(&t));
        assert_ne!(hash_token(&t), t);
        assert_eq!(hash_token(&t).len(), 64);
        assert_eq!(hash_token(&t), hex::encode(token_digest(&t)));
        assert!(t.len() >= MIN_TOKEN_LEN);
    }
}
