//! What an agent is told while working: the events streamed to them on
//! `GET /api/v1/me/events`. Each agent's events are numbered 1, 2, 3, … in the
//! order they were committed; a client resumes after the last number it saw.

/// The kinds of event an agent receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentEventKind {
    /// A new inbound message joined a task the agent holds (a customer's
    /// reply, or an auto-reply attached by policy).
    Message,
    /// One of the agent's drafts was made, discarded, queued, taken back,
    /// sent or failed for good (`reason`), so that every page of theirs
    /// shows the thread as it is.
    Draft,
    /// A task the agent holds changed state without them (e.g. concluded by
    /// sending under `conclude_on_send`).
    Task,
    /// A task is offered to the agent: accept or decline before `expires_at`.
    Offer,
    /// An offer to the agent ended without their answer (timed out, taken by
    /// a broadcast peer, cancelled by the customer, withdrawn).
    OfferWithdrawn,
    /// The agent's presence changed (in another tab, or a pause after a RONA).
    Presence,
    /// A new message in the chat of an IM task the agent holds.
    ChatMessage,
    /// New lines in the transcript of a call task the agent holds.
    Transcript,
}

impl AgentEventKind {
    /// The SSE `event:` name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentEventKind::Message => "message",
            AgentEventKind::Draft => "draft",
            AgentEventKind::Task => "task",
            AgentEventKind::Offer => "offer",
            AgentEventKind::OfferWithdrawn => "offer_withdrawn",
            AgentEventKind::Presence => "presence",
            AgentEventKind::ChatMessage => "chat_message",
            AgentEventKind::Transcript => "transcript",
        }
    }
}

/// How long events are kept for clients that reconnect with `Last-Event-ID`.
pub const EVENT_RETENTION_MILLIS: i64 = 7 * 24 * 3600 * 1000;

/// Parses a `Last-Event-ID` (or `?after=`) value: an event number, 0 or more.
pub fn parse_event_id(s: &str) -> Option<i64> {
    s.trim().parse::<i64>().ok().filter(|n| *n >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_non_negative_numbers() {
        assert_eq!(parse_event_id("42"), Some(42));
        assert_eq!(parse_event_id(" 0 "), Some(0));
        assert_eq!(parse_event_id("-1"), None);
        assert_eq!(parse_event_id("abc"), None);
        assert_eq!(parse_event_id(""), None);
    }

    #[test]
    fn kinds_have_stable_names() {
        assert_eq!(AgentEventKind::Message.as_str(), "message");
        assert_eq!(AgentEventKind::Draft.as_str(), "draft");
        assert_eq!(AgentEventKind::Task.as_str(), "task");
    }
}
