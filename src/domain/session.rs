//! User sessions: one agent's involvement in one task, the rows of My Sessions.
use super::DomainError;
use serde::{Deserialize, Serialize};

/// How an agent's involvement in a task turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionResult {
    Accepted,
    Declined,
    /// Redirect on no answer: the offer timed out.
    Rona,
    /// The customer left while the task was offered or open.
    Cancelled,
    /// The agent moved the task to another service or agent.
    Transferred,
    /// The offer ended without the agent: a broadcast peer accepted first, or
    /// the agent went away (`end_reason` says which).
    Withdrawn,
}

impl SessionResult {
    pub const ALL: [SessionResult; 6] = [
        SessionResult::Accepted,
        SessionResult::Declined,
        SessionResult::Rona,
        SessionResult::Cancelled,
        SessionResult::Transferred,
        SessionResult::Withdrawn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionResult::Accepted => "accepted",
            SessionResult::Declined => "declined",
            SessionResult::Rona => "rona",
            SessionResult::Cancelled => "cancelled",
            SessionResult::Transferred => "transferred",
            SessionResult::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                DomainError::Invalid(format!(
                    "unknown session result '{s}': expected accepted, declined, rona, cancelled, transferred or withdrawn"
                ))
            })
    }
}

/// Where a user session is in its life.
///
/// `offered → connected → wrap_up → concluded`; an offer that is declined, times
/// out or is cancelled before it was answered concludes at once. A concluded
/// session is an immutable reporting record (the database refuses to change it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Offered,
    Connected,
    WrapUp,
    Concluded,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Offered => "offered",
            SessionState::Connected => "connected",
            SessionState::WrapUp => "wrap_up",
            SessionState::Concluded => "concluded",
        }
    }

    pub fn parse(s: &str) -> Result<Self, DomainError> {
        match s {
            "offered" => Ok(SessionState::Offered),
            "connected" => Ok(SessionState::Connected),
            "wrap_up" => Ok(SessionState::WrapUp),
            "concluded" => Ok(SessionState::Concluded),
            other => Err(DomainError::Invalid(format!(
                "unknown session state '{other}'"
            ))),
        }
    }

    /// Live sessions are listed under "live" in My Sessions; the rest under "concluded".
    pub fn is_live(self) -> bool {
        self != SessionState::Concluded
    }
}

/// The session state that a result leads to: a session that was never answered
/// has nothing to wrap up and concludes at once; an answered one goes to wrap-up
/// and waits for the agent to save it.
pub fn state_after(result: SessionResult, answered: bool) -> SessionState {
    match (result, answered) {
        (SessionResult::Accepted, _) => SessionState::Connected,
        (_, true) => SessionState::WrapUp,
        (_, false) => SessionState::Concluded,
    }
}

/// Why a save is refused, if it is.
pub fn check_can_save(state: SessionState, saved: bool) -> Result<(), DomainError> {
    match state {
        SessionState::WrapUp => Ok(()),
        SessionState::Concluded if saved => Err(DomainError::Invalid(
            "this session is already saved: a saved session is final".into(),
        )),
        SessionState::Concluded => Err(DomainError::Invalid(
            "this session ended without a wrap-up (declined, missed, withdrawn or cancelled): there is nothing to save".into(),
        )),
        SessionState::Offered => Err(DomainError::Invalid(
            "this session is still an open offer: accept or decline it first".into(),
        )),
        SessionState::Connected => Err(DomainError::Invalid(
            "this session is still active: mark the task handled before saving".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_outcomes_conclude_at_once() {
        assert_eq!(
            state_after(SessionResult::Declined, false),
            SessionState::Concluded
        );
        assert_eq!(
            state_after(SessionResult::Rona, false),
            SessionState::Concluded
        );
        assert_eq!(
            state_after(SessionResult::Cancelled, true),
            SessionState::WrapUp
        );
        assert_eq!(
            state_after(SessionResult::Transferred, true),
            SessionState::WrapUp
        );
        assert_eq!(
            state_after(SessionResult::Accepted, false),
            SessionState::Connected
        );
    }

    #[test]
    fn only_wrap_up_can_be_saved() {
        assert!(check_can_save(SessionState::WrapUp, false).is_ok());
        assert!(check_can_save(SessionState::Connected, false).is_err());
        let saved = check_can_save(SessionState::Concluded, true)
            .unwrap_err()
            .to_string();
        assert!(saved.contains("already saved"), "{saved}");
        let never = check_can_save(SessionState::Concluded, false)
            .unwrap_err()
            .to_string();
        assert!(never.contains("nothing to save"), "{never}");
    }

    #[test]
    fn results_round_trip() {
        for r in SessionResult::ALL {
            assert_eq!(SessionResult::parse(r.as_str()).unwrap(), r);
        }
        assert!(SessionResult::parse("maybe").is_err());
    }
}
