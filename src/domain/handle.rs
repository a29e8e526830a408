//! Open-chat handles: a link that opens an IM task's chat for the agent who
//! holds it, and only for them. The token binds task, user session, agent and
//! expiry, and is signed with a rotatable server key named by its id, so a
//! key can be replaced without a deploy and every token it signed dies with
//! it. Whether the same agent still holds the task is checked when the link
//! is followed (by the store), not here.
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{Millis, TaskState};

type HmacSha256 = Hmac<Sha256>;

/// How long a handle stays valid by default (seconds).
pub const DEFAULT_TTL_SECS: i64 = 15 * 60;
/// The longest a handle may be made to live.
pub const MAX_TTL_SECS: i64 = 24 * 3600;

const VERSION: &str = "h1";

/// What a handle says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleClaims {
    pub task_id: String,
    /// The holder's user session when the handle was made.
    pub session_id: String,
    pub agent_id: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Why a handle was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// Not a handle at all, or a forged or damaged one.
    #[error("this link is not valid")]
    Invalid,
    /// Signed with a key this server does not have: rotated away (or a
    /// key id it never had).
    #[error("this link was signed with a key this server no longer has (retired)")]
    UnknownKey,
    /// Genuine, but past its time.
    #[error("this link has expired")]
    Expired(HandleClaims),
}

fn mac(key: &[u8], signed: &str) -> HmacSha256 {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(signed.as_bytes());
    m
}

fn checked_part(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.contains('\n')
}

/// A handle for `claims`, signed with key `key_id`.
pub fn sign(key_id: &str, key: &[u8], claims: &HandleClaims) -> String {
    let payload = format!(
        "{}\n{}\n{}\n{}",
        claims.task_id, claims.session_id, claims.agent_id, claims.expires_at
    );
    let signed = format!(
        "{VERSION}.{key_id}.{}",
        URL_SAFE_NO_PAD.encode(payload.as_bytes())
    );
    let sig = URL_SAFE_NO_PAD.encode(mac(key, &signed).finalize().into_bytes());
    format!("{signed}.{sig}")
}

/// The key id a handle names (to look its key up), if it looks like a handle.
pub fn key_id(token: &str) -> Option<&str> {
    if token.len() > 1024 {
        return None;
    }
    let mut parts = token.split('.');
    (parts.next()? == VERSION)
        .then(|| parts.next())
        .flatten()
        .filter(|k| !k.is_empty() && k.len() <= 64)
}

/// Checks a handle's signature with `key` (the key its id names; `None`
/// when that key is unknown) and its expiry at `now` (Unix seconds).
pub fn verify(token: &str, key: Option<&[u8]>, now: i64) -> Result<HandleClaims, HandleError> {
    let parts: Vec<&str> = token.split('.').collect();
    let [version, kid, payload, sig] = parts.as_slice() else {
        return Err(HandleError::Invalid);
    };
    if *version != VERSION || kid.is_empty() {
        return Err(HandleError::Invalid);
    }
    let key = key.ok_or(HandleError::UnknownKey)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| HandleError::Invalid)?;
    let signed = format!("{version}.{kid}.{payload}");
    mac(key, &signed)
        .verify_slice(&sig)
        .map_err(|_| HandleError::Invalid)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| HandleError::Invalid)?;
    let payload = String::from_utf8(payload).map_err(|_| HandleError::Invalid)?;
    let fields: Vec<&str> = payload.split('\n').collect();
    let [task_id, session_id, agent_id, expires] = fields.as_slice() else {
        return Err(HandleError::Invalid);
    };
    if ![task_id, session_id, agent_id]
        .iter()
        .all(|p| checked_part(p))
    {
        return Err(HandleError::Invalid);
    }
    let expires_at: i64 = expires.parse().map_err(|_| HandleError::Invalid)?;
    let claims = HandleClaims {
        task_id: task_id.to_string(),
        session_id: session_id.to_string(),
        agent_id: agent_id.to_string(),
        expires_at,
    };
    if now > expires_at {
        return Err(HandleError::Expired(claims));
    }
    Ok(claims)
}

/// Why a genuine, unexpired handle does not open the chat for this follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Someone other than the agent it was made for followed it.
    NotYours,
    /// The task moved on to another agent or queue (transfer).
    Transferred,
    /// The chat's task is over (handled, ended, cancelled).
    Over,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::NotYours => "not_yours",
            Refusal::Transferred => "transferred",
            Refusal::Over => "over",
        }
    }
}

/// Where the session a handle names stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionNow {
    /// It is still connected: its agent holds the task.
    pub connected: bool,
    /// The task moved on: the session was transferred away, or another agent
    /// holds the task now.
    pub moved_on: bool,
}

/// Decides whether the handle opens the chat for `follower`.
pub fn decide(claims: &HandleClaims, follower: &str, now: SessionNow) -> Result<(), Refusal> {
    if follower != claims.agent_id {
        return Err(Refusal::NotYours);
    }
    if now.connected {
        Ok(())
    } else if now.moved_on {
        Err(Refusal::Transferred)
    } else {
        Err(Refusal::Over)
    }
}

/// Where the session a handle names stands, from what is stored: the
/// session's state and result when it is the handle's own (same task and
/// agent; `None` otherwise), the agents holding the task now, and the
/// task's state. It moved on when it was transferred away, another agent
/// holds the task, or the task went back to waiting without it.
pub fn session_now(
    ours: Option<(&str, Option<&str>)>,
    holders: &[String],
    agent_id: &str,
    task: TaskState,
) -> SessionNow {
    let connected = ours.is_some_and(|(state, _)| state == "connected");
    let transferred = ours.is_some_and(|(_, result)| result == Some("transferred"));
    let moved_on = transferred
        || holders.iter().any(|h| h != agent_id)
        || (!connected && matches!(task, TaskState::Queued | TaskState::Offered));
    SessionNow {
        connected,
        moved_on,
    }
}

/// The signing keys to delete once a new key is made: `keys` oldest first
/// with the new one last, as (name, made at). A key goes once the key after
/// it has signed for longer than `keep_ms` (every handle it signed has
/// expired), or at once with `retire_all`; the newest key always stays.
pub fn retired_keys(
    keys: &[(String, Millis)],
    now: Millis,
    keep_ms: Millis,
    retire_all: bool,
) -> Vec<&str> {
    keys.windows(2)
        .filter(|pair| retire_all || pair[1].1 < now - keep_ms)
        .map(|pair| pair[0].0.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(expires_at: i64) -> HandleClaims {
        HandleClaims {
            task_id: "tsk_1".into(),
            session_id: "ses_1".into(),
            agent_id: "alice".into(),
            expires_at,
        }
    }

    #[test]
    fn handles_verify_with_their_key_until_they_expire() {
        let key = b"0123456789abcdef0123456789abcdef";
        let t = sign("k1", key, &claims(1000));
        assert_eq!(key_id(&t), Some("k1"));
        assert_eq!(verify(&t, Some(key), 999), Ok(claims(1000)));
        assert_eq!(
            verify(&t, Some(key), 1001),
            Err(HandleError::Expired(claims(1000)))
        );
        assert_eq!(verify(&t, Some(b"other"), 999), Err(HandleError::Invalid));
        assert_eq!(verify(&t, None, 999), Err(HandleError::UnknownKey));
    }

    #[test]
    fn tampering_is_detected() {
        let key = b"k";
        let t = sign("k1", key, &claims(1000));
        let parts: Vec<&str> = t.split('.').collect();
        // Another agent or a later expiry in the payload, same signature.
        let forged = URL_SAFE_NO_PAD.encode("tsk_1\nses_1\nbob\n1000");
        let t2 = format!("{}.{}.{}.{}", parts[0], parts[1], forged, parts[3]);
        assert_eq!(verify(&t2, Some(key), 999), Err(HandleError::Invalid));
        // The key id is signed too.
        let t3 = format!("{}.k2.{}.{}", parts[0], parts[2], parts[3]);
        assert_eq!(verify(&t3, Some(key), 999), Err(HandleError::Invalid));
        for junk in ["", "h1", "h1.k1", "h1.k1.x.y", "x.k1.a.b", "h1..a.b"] {
            assert!(verify(junk, Some(key), 0).is_err(), "{junk}");
        }
    }

    #[test]
    fn only_the_current_holder_gets_in() {
        let c = claims(1000);
        let held = SessionNow {
            connected: true,
            moved_on: false,
        };
        let moved = SessionNow {
            connected: false,
            moved_on: true,
        };
        let over = SessionNow {
            connected: false,
            moved_on: false,
        };
        assert_eq!(decide(&c, "alice", held), Ok(()));
        assert_eq!(decide(&c, "bob", held), Err(Refusal::NotYours));
        assert_eq!(decide(&c, "alice", moved), Err(Refusal::Transferred));
        assert_eq!(decide(&c, "alice", over), Err(Refusal::Over));
    }

    #[test]
    fn a_handles_session_stands_connected_or_moved_on() {
        let none: &[String] = &[];
        let alice = &["alice".to_string()][..];
        let bob = &["bob".to_string()][..];
        let now = |connected, moved_on| SessionNow {
            connected,
            moved_on,
        };
        // Alice holds it.
        assert_eq!(
            session_now(
                Some(("connected", None)),
                alice,
                "alice",
                TaskState::Connected
            ),
            now(true, false)
        );
        // Transferred away: moved on, even while the task waits.
        assert_eq!(
            session_now(
                Some(("ended", Some("transferred"))),
                none,
                "alice",
                TaskState::Queued
            ),
            now(false, true)
        );
        assert_eq!(
            session_now(
                Some(("ended", Some("transferred"))),
                none,
                "alice",
                TaskState::Concluded
            ),
            now(false, true)
        );
        // Another agent holds it.
        assert_eq!(
            session_now(
                Some(("ended", Some("accepted"))),
                bob,
                "alice",
                TaskState::Connected
            ),
            now(false, true)
        );
        // Back in a queue without her, or offered to someone.
        assert_eq!(
            session_now(
                Some(("ended", Some("accepted"))),
                none,
                "alice",
                TaskState::Offered
            ),
            now(false, true)
        );
        // Over (wrapped up, handled) with nobody else: not moved on.
        assert_eq!(
            session_now(
                Some(("wrap_up", Some("accepted"))),
                none,
                "alice",
                TaskState::WrapUp
            ),
            now(false, false)
        );
        assert_eq!(
            session_now(
                Some(("ended", Some("accepted"))),
                none,
                "alice",
                TaskState::Concluded
            ),
            now(false, false)
        );
        // Not her session (or none): only the task and its holders tell.
        assert_eq!(
            session_now(None, none, "alice", TaskState::Concluded),
            now(false, false)
        );
        assert_eq!(
            session_now(None, none, "alice", TaskState::Queued),
            now(false, true)
        );
    }

    #[test]
    fn a_key_is_retired_once_its_successor_has_signed_for_longer_than_a_handle_lives() {
        let keys: Vec<(String, Millis)> = vec![
            ("k1".into(), 0),
            ("k2".into(), 1_000),
            ("k3".into(), 5_000),
            ("new".into(), 10_000),
        ];
        // k2 signs since 1000, k3 since 5000, the new one since now.
        assert_eq!(retired_keys(&keys, 10_000, 4_000, false), vec!["k1", "k2"]);
        assert_eq!(retired_keys(&keys, 10_000, 8_000, false), vec!["k1"]);
        assert_eq!(
            retired_keys(&keys, 10_000, 9_500, false),
            Vec::<&str>::new()
        );
        assert_eq!(retired_keys(&keys, 10_000, 0, false), vec!["k1", "k2"]);
        // All at once; the newest always stays.
        assert_eq!(
            retired_keys(&keys, 10_000, 1_000_000, true),
            vec!["k1", "k2", "k3"]
        );
        assert_eq!(
            retired_keys(&keys[3..], 10_000, 0, true),
            Vec::<&str>::new()
        );
    }
}
