//! Outbound webhooks: which changes can be subscribed to, how a delivery is
//! signed, and when a failed one is tried again or given up (dead-lettered).
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The changes of tasks and sessions a subscription can ask for (`*`: all).
pub const EVENT_KINDS: &[&str] = &[
    "task.created",
    "task.offered",
    "task.accepted",
    "task.declined",
    "task.rona",
    "task.withdrawn",
    "task.overflowed",
    "task.transferred",
    "task.handled",
    "task.cancelled",
    "task.customer_left",
    "task.customer_back",
    "task.updated",
    "task.concluded",
    "session.saved",
];

/// Checks a subscription's event list: known kinds or `*`, no repeats.
pub fn check_events(events: &[String]) -> Result<(), String> {
    if events.is_empty() {
        return Err("events: list at least one event type, or \"*\" for all".into());
    }
    let mut seen = std::collections::HashSet::new();
    for (i, e) in events.iter().enumerate() {
        if e != "*" && !EVENT_KINDS.contains(&e.as_str()) {
            return Err(format!(
                "events[{i}]: unknown event type '{}': use {} or \"*\"",
                super::clip(e, 40),
                EVENT_KINDS.join(", ")
            ));
        }
        if !seen.insert(e) {
            return Err(format!("events[{i}]: '{e}' is listed twice"));
        }
    }
    Ok(())
}

/// Shortest subscription secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// The `X-Switchboard-Signature` value for a body sent at `timestamp` (Unix
/// seconds): `sha256=` and the hex HMAC-SHA256 of `"<timestamp>.<body>"`
/// under the subscription's secret (as for chat webhooks).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// How failed deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure; doubled after each further one.
    pub base_ms: i64,
    /// The longest wait between two attempts.
    pub max_delay_ms: i64,
    /// How long a delivery is tried before it is dead-lettered.
    pub give_up_after_ms: i64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_ms: 5_000,
            max_delay_ms: 3_600_000,
            give_up_after_ms: 86_400_000,
        }
    }
}

/// What happens after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again at this time (ms since the epoch).
    RetryAt(i64),
    /// Tried long enough: dead-lettered, waiting for an operator.
    Dead,
}

impl RetryPolicy {
    /// After the `attempts`-th failed attempt (1, 2, …) at `now`, of a
    /// delivery tried since `since`: the next attempt, `base × 2^(attempts − 1)`
    /// later (at most `max_delay_ms`), unless that is past the give-up time.
    pub fn after_failure(&self, attempts: i64, since: i64, now: i64) -> AfterFailure {
        let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 40)).unwrap_or(40);
        let delay = self
            .base_ms
            .saturating_mul(2i64.saturating_pow(exp))
            .min(self.max_delay_ms)
            .max(1);
        let next = now.saturating_add(delay);
        if next > since.saturating_add(self.give_up_after_ms) {
            AfterFailure::Dead
        } else {
            AfterFailure::RetryAt(next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_of_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
        let a = signature(b"secret", 1, b"body");
        assert_ne!(a, signature(b"secret", 2, b"body"));
        assert_ne!(a, signature(b"other", 1, b"body"));
        assert_ne!(a, signature(b"secret", 1, b"bodY"));
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64);
    }

    #[test]
    fn retries_back_off_then_give_up_after_a_day() {
        let p = RetryPolicy::default();
        assert_eq!(p.after_failure(1, 0, 0), AfterFailure::RetryAt(5_000));
        assert_eq!(p.after_failure(2, 0, 10_000), AfterFailure::RetryAt(20_000));
        assert_eq!(p.after_failure(3, 0, 30_000), AfterFailure::RetryAt(50_000));
        // Capped at an hour between attempts.
        assert_eq!(
            p.after_failure(30, 0, 1_000_000),
            AfterFailure::RetryAt(1_000_000 + 3_600_000)
        );
        // Nothing is scheduled past a day after the first attempt.
        assert_eq!(p.after_failure(25, 0, 86_000_000), AfterFailure::Dead);
        let short = RetryPolicy {
            base_ms: 100,
            max_delay_ms: 1_000,
            give_up_after_ms: 2_000,
        };
        assert_eq!(short.after_failure(1, 0, 0), AfterFailure::RetryAt(100));
        assert_eq!(short.after_failure(5, 0, 1_500), AfterFailure::Dead);
    }

    #[test]
    fn event_lists_are_checked() {
        assert!(check_events(&["*".into()]).is_ok());
        assert!(check_events(&["task.created".into(), "session.saved".into()]).is_ok());
        assert!(check_events(&[]).is_err());
        let err = check_events(&["task.exploded".into()]).unwrap_err();
        assert!(err.starts_with("events[0]: unknown event type"), "{err}");
        assert!(check_events(&["task.created".into(), "task.created".into()]).is_err());
    }
}
