//! Tasks: one customer contact handled by one service, and the rules of its state machine.
use super::DomainError;
use serde::{Deserialize, Serialize};

/// The channel a task came through.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Email,
    Im,
    Call,
}

impl Modality {
    pub const ALL: [Modality; 3] = [Modality::Email, Modality::Im, Modality::Call];

    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Email => "email",
            Modality::Im => "im",
            Modality::Call => "call",
        }
    }

    pub fn parse(s: &str) -> Result<Self, DomainError> {
        match s {
            "email" => Ok(Modality::Email),
            "im" => Ok(Modality::Im),
            "call" => Ok(Modality::Call),
            other => Err(DomainError::Invalid(format!(
                "unknown modality '{other}': expected email, im or call"
            ))),
        }
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Offered,
    Connected,
    WrapUp,
    Concluded,
    Cancelled,
}

/// Something that happens to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent {
    /// Routing offers the task to an agent.
    Offer,
    /// The offered agent accepts.
    Accept,
    /// The offered agent declines, or the offer times out (RONA): back to the queue.
    Return,
    /// An agent takes a queued task directly (pickup distribution).
    Pickup,
    /// The agent holding the task marks it handled (or the call ends).
    Handle,
    /// Every session on the task is saved.
    Conclude,
    /// The customer left before the task was done.
    Cancel,
    /// The task moves to another service's queue.
    Transfer,
}

impl TaskEvent {
    fn describe(self) -> &'static str {
        match self {
            TaskEvent::Offer => "be offered",
            TaskEvent::Accept => "be accepted",
            TaskEvent::Return => "return to the queue",
            TaskEvent::Pickup => "be picked up",
            TaskEvent::Handle => "be marked handled",
            TaskEvent::Conclude => "be concluded",
            TaskEvent::Cancel => "be cancelled",
            TaskEvent::Transfer => "be transferred",
        }
    }
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Queued,
        TaskState::Offered,
        TaskState::Connected,
        TaskState::WrapUp,
        TaskState::Concluded,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Offered => "offered",
            TaskState::Connected => "connected",
            TaskState::WrapUp => "wrap_up",
            TaskState::Concluded => "concluded",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                DomainError::Invalid(format!(
                    "unknown task state '{s}': expected one of queued, offered, connected, wrap_up, concluded, cancelled"
                ))
            })
    }

    /// Whether the task is finished for good.
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Concluded | TaskState::Cancelled)
    }

    /// The state after `event`, or why the event is not allowed now.
    pub fn apply(self, event: TaskEvent) -> Result<TaskState, DomainError> {
        use TaskEvent as E;
        use TaskState as S;
        let next = match (self, event) {
            (S::Queued, E::Offer) => S::Offered,
            (S::Offered, E::Accept) => S::Connected,
            (S::Offered, E::Return) => S::Queued,
            (S::Queued, E::Pickup) => S::Connected,
            (S::Connected, E::Handle) => S::WrapUp,
            (S::WrapUp, E::Conclude) => S::Concluded,
            (S::Queued | S::Offered | S::Connected, E::Cancel) => S::Cancelled,
            (S::Queued | S::Offered | S::Connected, E::Transfer) => S::Queued,
            (from, event) => {
                return Err(DomainError::InvalidTransition {
                    from: from.as_str(),
                    event: event.describe(),
                });
            }
        };
        Ok(next)
    }
}

/// Task priority: higher is served first; bounded so it stays meaningful.
pub fn validate_priority(priority: i32) -> Result<i32, DomainError> {
    if (-100..=100).contains(&priority) {
        Ok(priority)
    } else {
        Err(DomainError::Invalid(format!(
            "priority {priority} is out of range: use -100 to 100"
        )))
    }
}

/// A priority as a JSON body gives it: any number, checked against the
/// priority's own range (a `1e20` or a `2.5` is told what a priority may be,
/// not what an integer type holds).
pub fn priority_from_json(n: &serde_json::Number) -> Result<i32, DomainError> {
    match super::whole_in(n, -100, 100) {
        Ok(p) => Ok(p as i32),
        Err(super::NotInRange::OutOfRange) => Err(DomainError::Invalid(format!(
            "priority {n} is out of range: use -100 to 100"
        ))),
        Err(super::NotInRange::NotWhole) => Err(DomainError::Invalid(format!(
            "priority {n} must be a whole number from -100 to 100"
        ))),
    }
}

/// A priority given in a JSON body, or `default` when left out.
pub fn priority_or(n: Option<&serde_json::Number>, default: i32) -> Result<i32, DomainError> {
    n.map_or(Ok(default), priority_from_json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_priority_in_json_is_told_its_own_range() {
        let n = |s: &str| serde_json::from_str::<serde_json::Number>(s).unwrap();
        assert_eq!(priority_from_json(&n("7")).unwrap(), 7);
        assert_eq!(priority_from_json(&n("-100")).unwrap(), -100);
        assert_eq!(priority_from_json(&n("5.0")).unwrap(), 5);
        for (text, says) in [
            ("101", "priority 101 is out of range: use -100 to 100"),
            ("1e20", "is out of range: use -100 to 100"),
            ("18446744073709551615", "out of range: use -100 to 100"),
            ("-3000000000", "out of range: use -100 to 100"),
            (
                "2.5",
                "priority 2.5 must be a whole number from -100 to 100",
            ),
        ] {
            let e = priority_from_json(&n(text)).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn the_happy_path_reaches_concluded() {
        let s = TaskState::Queued
            .apply(TaskEvent::Offer)
            .and_then(|s| s.apply(TaskEvent::Accept))
            .and_then(|s| s.apply(TaskEvent::Handle))
            .and_then(|s| s.apply(TaskEvent::Conclude))
            .unwrap();
        assert_eq!(s, TaskState::Concluded);
        assert!(s.is_final());
    }

    #[test]
    fn decline_and_rona_return_to_the_queue() {
        assert_eq!(
            TaskState::Offered.apply(TaskEvent::Return).unwrap(),
            TaskState::Queued
        );
    }

    #[test]
    fn pickup_only_from_the_queue() {
        assert_eq!(
            TaskState::Queued.apply(TaskEvent::Pickup).unwrap(),
            TaskState::Connected
        );
        let err = TaskState::Connected.apply(TaskEvent::Pickup).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a task in state 'connected' cannot be picked up"
        );
    }

    #[test]
    fn final_states_accept_nothing() {
        for event in [
            TaskEvent::Offer,
            TaskEvent::Accept,
            TaskEvent::Pickup,
            TaskEvent::Cancel,
            TaskEvent::Handle,
        ] {
            assert!(TaskState::Concluded.apply(event).is_err());
            assert!(TaskState::Cancelled.apply(event).is_err());
        }
    }

    #[test]
    fn states_and_modalities_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()).unwrap(), s);
        }
        for m in Modality::ALL {
            assert_eq!(Modality::parse(m.as_str()).unwrap(), m);
        }
        assert!(Modality::parse("fax").is_err());
    }

    #[test]
    fn priority_is_bounded() {
        assert!(validate_priority(5).is_ok());
        assert!(validate_priority(1000).is_err());
    }
}
