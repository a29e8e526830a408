//! The JSON of a session written straight into the response's bytes: My
//! Sessions is the hottest read there is (every agent's page opens and
//! refreshes it), and serde_json's string escaping, one byte at a time,
//! was the largest single item of the server's CPU per page (11% of a
//! `perf` profile; benches/README.md). The text is byte for byte what
//! [`super::views::SessionView`]'s `Serialize` writes (a test compares
//! them over random and hostile records), so the schema stays that one.
use crate::domain::{DayMemo, Millis, Rfc3339Millis, millis_to_rfc3339};
use crate::store::Session;

/// Whether `byte` must be escaped in a JSON string, as serde_json does it:
/// the control characters, `"` and `\` (nothing else).
const fn escaped(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// `s` as a JSON string. The check runs over the whole text without an
/// early exit (the compiler turns it into vector instructions); only text
/// that holds something to escape is walked byte by byte.
fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.push(b'"');
    if !bytes.iter().fold(false, |any, &b| any | escaped(b)) {
        out.extend_from_slice(bytes);
    } else {
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if !escaped(b) {
                continue;
            }
            out.extend_from_slice(&bytes[start..i]);
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0x0f)]);
                }
            }
            start = i + 1;
        }
        out.extend_from_slice(&bytes[start..]);
    }
    out.push(b'"');
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A timestamp as RFC 3339 text, or null.
fn time(out: &mut Vec<u8>, ms: Option<Millis>, memo: &mut DayMemo) {
    match ms {
        None => out.extend_from_slice(b"null"),
        Some(ms) => match Rfc3339Millis::on(ms, memo) {
            // Digits and separators: nothing to escape.
            Some(t) => {
                out.push(b'"');
                out.extend_from_slice(t.as_str().as_bytes());
                out.push(b'"');
            }
            None => string(out, &millis_to_rfc3339(ms)),
        },
    }
}

fn list(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, item);
    }
    out.push(b']');
}

/// One session, its fields in the order the API has always written them.
pub(super) fn session(out: &mut Vec<u8>, s: &Session, memo: &mut DayMemo) {
    out.extend_from_slice(b"{\"agent_id\":");
    string(out, &s.agent_id);
    out.extend_from_slice(b",\"answered_at\":");
    time(out, s.answered_at, memo);
    out.extend_from_slice(b",\"created_at\":");
    time(out, Some(s.created_at), memo);
    out.extend_from_slice(b",\"customer\":{\"address\":");
    opt_string(out, s.customer_address.as_deref());
    out.extend_from_slice(b",\"name\":");
    opt_string(out, s.customer_name.as_deref());
    out.extend_from_slice(b"},\"end_reason\":");
    opt_string(out, s.end_reason.as_deref());
    out.extend_from_slice(b",\"ended_at\":");
    time(out, s.ended_at, memo);
    out.extend_from_slice(b",\"expires_at\":");
    time(out, s.expires_at, memo);
    out.extend_from_slice(b",\"id\":");
    string(out, &s.id);
    out.extend_from_slice(if s.state.is_live() {
        b",\"live\":true,\"modality\":"
    } else {
        b",\"live\":false,\"modality\":"
    });
    string(out, s.modality.as_str());
    out.extend_from_slice(b",\"result\":");
    opt_string(out, s.result.map(|r| r.as_str()));
    out.extend_from_slice(b",\"saved_at\":");
    time(out, s.saved_at, memo);
    out.extend_from_slice(b",\"service\":");
    string(out, &s.service_id);
    out.extend_from_slice(b",\"state\":");
    string(out, s.state.as_str());
    out.extend_from_slice(b",\"subject\":");
    opt_string(out, s.subject.as_deref());
    out.extend_from_slice(b",\"task_id\":");
    string(out, &s.task_id);
    out.extend_from_slice(b",\"wrapup\":{\"codes\":{\"primary\":");
    list(out, &s.wrapup.codes.primary);
    out.extend_from_slice(b",\"secondary\":");
    list(out, &s.wrapup.codes.secondary);
    out.extend_from_slice(b"},\"tags\":");
    list(out, &s.wrapup.tags);
    out.extend_from_slice(b"}}");
}

/// A page of sessions: `{"items":[…],"next_cursor":…}`.
pub(super) fn page(out: &mut Vec<u8>, items: &[Session], next_cursor: Option<&str>) {
    out.extend_from_slice(b"{\"items\":[");
    let mut memo = DayMemo::default();
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        session(out, s, &mut memo);
    }
    out.extend_from_slice(b"],\"next_cursor\":");
    opt_string(out, next_cursor);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::wrapup::{WrapUp, WrapUpCodes};
    use crate::domain::{Modality, SessionResult, SessionState};
    use rand::Rng;
    use rand::seq::IndexedRandom;

    /// Texts that need every kind of escape, and some that need none.
    const TEXTS: &[&str] = &[
        "",
        "Refund for order 1234",
        "quote \" and backslash \\ and slash /",
        "line\nbreak\r\ttab\u{8}\u{c}",
        "\u{0}\u{1}\u{1f}\u{7f} controls",
        "Grüße, 東京, emoji 🎉, RTL \u{202e}",
        "</script><script>alert(1)</script>",
        "a very long subject without any escapes at all, longer than a vector register's width by far",
    ];

    fn text(rng: &mut impl Rng) -> String {
        if rng.random_bool(0.3) {
            // Random characters, controls and quotes among them.
            (0..rng.random_range(0..80))
                .map(|_| match rng.random_range(0..6) {
                    0 => char::from(rng.random_range(0u8..0x20)),
                    1 => *['"', '\\', '/', '\u{7f}'].choose(rng).unwrap_or(&'"'),
                    2 => char::from_u32(rng.random_range(0x80..0x3000)).unwrap_or('é'),
                    _ => char::from(rng.random_range(0x20u8..0x7f)),
                })
                .collect()
        } else {
            TEXTS.choose(rng).copied().unwrap_or_default().to_string()
        }
    }

    fn time(rng: &mut impl Rng) -> Option<Millis> {
        rng.random_bool(0.7).then(|| match rng.random_range(0..10) {
            // Outside the years 0000–9999: the fallback rendering.
            0 => 253_402_300_800_000 + rng.random_range(0..1_000_000_000),
            1 => -62_167_219_200_001 - rng.random_range(0..1_000_000_000),
            // Before the epoch, within the years rendered on the stack.
            2 => rng.random_range(-62_167_219_200_000..0),
            // Most on one day (as a page's rows are: the day's date is
            // reused) or the days around it.
            3..=6 => 1_764_547_200_000 + rng.random_range(-86_400_000..2 * 86_400_000),
            _ => rng.random_range(0..4_102_444_800_000),
        })
    }

    fn session_at(rng: &mut impl Rng) -> Session {
        Session {
            id: text(rng),
            task_id: text(rng),
            agent_id: text(rng),
            service_id: text(rng),
            modality: *Modality::ALL.choose(rng).unwrap_or(&Modality::Email),
            state: *[
                SessionState::Offered,
                SessionState::Connected,
                SessionState::WrapUp,
                SessionState::Concluded,
            ]
            .choose(rng)
            .unwrap_or(&SessionState::Concluded),
            result: rng.random_bool(0.8).then(|| {
                *SessionResult::ALL
                    .choose(rng)
                    .unwrap_or(&SessionResult::Rona)
            }),
            created_at: time(rng).unwrap_or(0),
            answered_at: time(rng),
            ended_at: time(rng),
            saved_at: time(rng),
            subject: rng_opt(rng),
            customer_name: rng_opt(rng),
            customer_address: rng_opt(rng),
            wrapup: WrapUp {
                codes: WrapUpCodes {
                    primary: (0..rng.random_range(0..3)).map(|_| text(rng)).collect(),
                    secondary: (0..rng.random_range(0..3)).map(|_| text(rng)).collect(),
                },
                tags: (0..rng.random_range(0..4)).map(|_| text(rng)).collect(),
            },
            expires_at: time(rng),
            end_reason: rng_opt(rng),
        }
    }

    fn rng_opt(rng: &mut impl Rng) -> Option<String> {
        rng.random_bool(0.7).then(|| text(rng))
    }

    #[test]
    fn pages_and_sessions_are_byte_for_byte_what_serde_writes() {
        use rand::SeedableRng;
        let seed: u64 = rand::random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for round in 0..300 {
            let items: Vec<Session> = (0..rng.random_range(0..8))
                .map(|_| session_at(&mut rng))
                .collect();
            let cursor = rng_opt(&mut rng);
            let mut ours = Vec::new();
            page(&mut ours, &items, cursor.as_deref());
            let serde = super::super::views::sessions_page_by_serde(&items, cursor.as_deref());
            assert!(!serde.is_empty());
            for item in &items {
                let mut one = Vec::new();
                session(&mut one, item, &mut DayMemo::default());
                let by_serde =
                    serde_json::to_vec(&super::super::views::session(item)).unwrap_or_default();
                assert_eq!(
                    String::from_utf8_lossy(&one),
                    String::from_utf8_lossy(&by_serde),
                    "round {round} of seed {seed}"
                );
            }
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&serde),
                "round {round} of seed {seed}"
            );
        }
    }
}
