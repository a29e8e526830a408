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
    fn hash_is_sha256_hex_and_not_the_token() {
        // The stored form must stay the same across versions (known answer:
        // SHA-256 of "abc", FIPS 180-2), or every configured token breaks.
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (t, u) = (generate_token(), generate_token());
        assert_ne!(t, u, "two fresh tokens differ");
        assert_ne!(hash_token(&t), hash_token(&u));
        assert_ne!(hash_token(&t), t);
        assert_eq!(hash_token(&t).len(), 64);
        assert_eq!(hash_token(&t), hex::encode(token_digest(&t)));
        assert!(t.len() >= MIN_TOKEN_LEN);
        assert!(t.starts_with("sb_") && t[3..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
