//! Signed, expiring links: a browser can open a preview, an inline image or a
//! proxied image without a bearer header, for one task, for a short time.
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How long a signed link stays valid by default.
pub const LINK_TTL_SECS: i64 = 15 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("this link has expired: reload the task to get a fresh one")]
    Expired,
    #[error("this link is not valid")]
    Invalid,
}

/// The HMAC of `scope` and `expires`, ready to finalize or verify.
fn keyed(key: &[u8], scope: &str, expires: i64) -> HmacSha256 {
    // A key of any length is accepted by HMAC; this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(scope.as_bytes());
    m.update(b"|");
    m.update(expires.to_string().as_bytes());
    m
}

fn mac(key: &[u8], scope: &str, expires: i64) -> Vec<u8> {
    keyed(key, scope, expires).finalize().into_bytes()[..20].to_vec()
}

/// A token for `scope` (e.g. `task:tsk_…`) valid until `expires` (Unix seconds).
pub fn sign(key: &[u8], scope: &str, expires: i64) -> String {
    format!("{expires}.{}", hex::encode(mac(key, scope, expires)))
}

/// A lasting mark that the server itself named `scope` (e.g. one image a
/// preview proxies), checked with [`verify_mark`]: it does not expire (the
/// link token beside it does).
pub fn mark(key: &[u8], scope: &str) -> String {
    hex::encode(mac(key, scope, i64::MAX))
}

/// Checks a [`mark`] for `scope`, in constant time.
pub fn verify_mark(key: &[u8], scope: &str, mark: &str) -> bool {
    let Ok(sig) = hex::decode(mark) else {
        return false;
    };
    sig.len() >= 16
        && keyed(key, scope, i64::MAX)
            .verify_truncated_left(&sig)
            .is_ok()
}

/// Checks a token for `scope` at time `now` (Unix seconds), in constant time.
pub fn verify(key: &[u8], scope: &str, token: &str, now: i64) -> Result<(), LinkError> {
    let (exp, sig) = token.split_once('.').ok_or(LinkError::Invalid)?;
    let expires: i64 = exp.parse().map_err(|_| LinkError::Invalid)?;
    let sig = hex::decode(sig).map_err(|_| LinkError::Invalid)?;
    keyed(key, scope, expires)
        .verify_truncated_left(&sig)
        .map_err(|_| LinkError::Invalid)?;
    if sig.len() < 16 {
        return Err(LinkError::Invalid);
    }
    if now > expires {
        return Err(LinkError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_verify_for_their_scope_only() {
        let key = b"0123456789abcdef0123456789abcdef";
        let m = mark(key, "image:tsk_1|https://a.example/x.png");
        assert!(verify_mark(key, "image:tsk_1|https://a.example/x.png", &m));
        assert!(!verify_mark(key, "image:tsk_1|https://a.example/y.png", &m));
        assert!(!verify_mark(key, "image:tsk_2|https://a.example/x.png", &m));
        assert!(!verify_mark(
            key,
            "image:tsk_1|https://a.example/x.png",
            "00"
        ));
        assert!(!verify_mark(
            key,
            "image:tsk_1|https://a.example/x.png",
            "zz"
        ));
    }

    #[test]
    fn tokens_verify_for_their_scope_only_until_they_expire() {
        let key = b"0123456789abcdef0123456789abcdef";
        let t = sign(key, "task:tsk_1", 1000);
        assert_eq!(verify(key, "task:tsk_1", &t, 999), Ok(()));
        assert_eq!(verify(key, "task:tsk_2", &t, 999), Err(LinkError::Invalid));
        assert_eq!(
            verify(b"another key", "task:tsk_1", &t, 999),
            Err(LinkError::Invalid)
        );
        assert_eq!(verify(key, "task:tsk_1", &t, 1001), Err(LinkError::Expired));
        // The expiry is covered by the signature.
        let forged = t.replacen("1000", "9999", 1);
        assert_eq!(
            verify(key, "task:tsk_1", &forged, 999),
            Err(LinkError::Invalid)
        );
        for junk in ["", ".", "x.y", "1000.", "1000.zz", "1000.00"] {
            assert_eq!(
                verify(key, "task:tsk_1", junk, 999),
                Err(LinkError::Invalid),
                "{junk}"
            );
        }
    }
}
