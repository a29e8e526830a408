//! Ingestion rules, free of I/O: what becomes of an incoming mail (a new task,
//! an addition to an open task, a note in a conversation, or nothing), and how
//! a mailbox cursor moves.
use super::DomainError;
use super::task::TaskState;
use serde::{Deserialize, Serialize};

/// A service's policy for automatic mail (auto-replies, bulk mail, bounces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoReplyPolicy {
    /// Recorded, never queued.
    Drop,
    /// Added to the conversation it belongs to; never a new task.
    Attach,
    /// Treated like any other mail.
    Queue,
}

impl AutoReplyPolicy {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        match s {
            "drop" => Ok(AutoReplyPolicy::Drop),
            "attach" => Ok(AutoReplyPolicy::Attach),
            "queue" => Ok(AutoReplyPolicy::Queue),
            other => Err(DomainError::Invalid(format!(
                "auto_reply_policy '{other}' is not drop, attach or queue"
            ))),
        }
    }
}

/// The conversation an incoming mail replies to, found through In-Reply-To / References.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadMatch {
    pub conversation_id: String,
    /// The conversation's newest task and its state.
    pub latest_task: Option<(String, TaskState)>,
}

/// What ingestion does with one mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// A new task in a new conversation.
    Queued,
    /// Appended to the conversation's open task; its holder is told.
    Appended { task_id: String },
    /// A new task linked to a conversation whose tasks are all finished, so its history shows.
    Reopened { conversation_id: String },
    /// Automatic mail added to its conversation without a task.
    Attached {
        conversation_id: String,
        task_id: Option<String>,
    },
    /// Automatic mail recorded without a conversation or task (policy `drop`,
    /// or `attach` with nothing to attach to).
    Recorded,
}

impl Disposition {
    pub fn as_str(&self) -> &'static str {
        match self {
            Disposition::Queued => "queued",
            Disposition::Appended { .. } => "appended",
            Disposition::Reopened { .. } => "reopened",
            Disposition::Attached { .. } => "attached",
            Disposition::Recorded => "recorded",
        }
    }

    /// Whether a new task is created.
    pub fn creates_task(&self) -> bool {
        matches!(self, Disposition::Queued | Disposition::Reopened { .. })
    }
}

/// Decides what becomes of a mail. `automatic` is true for auto-replies, bulk
/// mail and bounces, which are never answered automatically and follow `policy`.
pub fn decide(
    automatic: bool,
    policy: AutoReplyPolicy,
    thread: Option<ThreadMatch>,
) -> Disposition {
    if automatic && policy != AutoReplyPolicy::Queue {
        return match (policy, thread) {
            (AutoReplyPolicy::Attach, Some(t)) => Disposition::Attached {
                conversation_id: t.conversation_id,
                task_id: t.latest_task.map(|(id, _)| id),
            },
            _ => Disposition::Recorded,
        };
    }
    match thread {
        None => Disposition::Queued,
        // Appended while the task is with its agent; once it is handled
        // (in wrap-up) or over, the customer's new words are new work (as a
        // chat's are), linked to the conversation.
        Some(ThreadMatch {
            latest_task:
                Some((task_id, TaskState::Queued | TaskState::Offered | TaskState::Connected)),
            ..
        }) => Disposition::Appended { task_id },
        Some(t) => Disposition::Reopened {
            conversation_id: t.conversation_id,
        },
    }
}

/// Where a mailbox's sync stands: the server's UIDVALIDITY and the highest UID
/// committed. Committed in the same transaction as the tasks it produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxCursor {
    pub uid_validity: u32,
    pub last_uid: u32,
}

impl MailboxCursor {
    /// The cursor to sync from after selecting a folder whose UIDVALIDITY is
    /// `server_validity`, and whether this is a resync: a changed UIDVALIDITY
    /// means every UID is new, so everything is fetched again and deduplicated
    /// by content.
    pub fn after_select(
        stored: Option<MailboxCursor>,
        server_validity: u32,
    ) -> (MailboxCursor, bool) {
        match stored {
            Some(c) if c.uid_validity == server_validity => (c, false),
            Some(_) => (
                MailboxCursor {
                    uid_validity: server_validity,
                    last_uid: 0,
                },
                true,
            ),
            None => (
                MailboxCursor {
                    uid_validity: server_validity,
                    last_uid: 0,
                },
                false,
            ),
        }
    }
}

/// Why a mail went to the quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineReason {
    TooLarge,
    Unparseable,
    Timeout,
    /// The database refused to store it (its reason is in the detail).
    Unstorable,
}

impl QuarantineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineReason::TooLarge => "too_large",
            QuarantineReason::Unparseable => "unparseable",
            QuarantineReason::Timeout => "timeout",
            QuarantineReason::Unstorable => "unstorable",
        }
    }
}

/// The service address a mail reached (the task's `reached`): the first of
/// its To and Cc recipients that is one of the service's `own` addresses;
/// else the service's first own address (the mail came Bcc, or through a
/// forward or a list); else its first To recipient.
/// At most 320 characters (as the API takes it): the fallback is the
/// sender's to choose.
pub fn address_reached(to: &[&str], cc: &[&str], own: &[String]) -> Option<String> {
    to.iter()
        .chain(cc)
        .find(|a| own.iter().any(|o| o.eq_ignore_ascii_case(a)))
        .map(|a| a.to_lowercase())
        .or_else(|| own.first().map(|o| o.to_lowercase()))
        .or_else(|| to.first().map(|a| a.to_lowercase()))
        .map(|a| a.chars().take(320).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(state: Option<TaskState>) -> Option<ThreadMatch> {
        Some(ThreadMatch {
            conversation_id: "cnv_1".into(),
            latest_task: state.map(|s| ("tsk_1".into(), s)),
        })
    }

    #[test]
    fn a_new_mail_is_queued() {
        assert_eq!(
            decide(false, AutoReplyPolicy::Drop, None),
            Disposition::Queued
        );
    }

    #[test]
    fn a_reply_joins_an_open_task_or_reopens_a_finished_conversation() {
        assert_eq!(
            decide(
                false,
                AutoReplyPolicy::Attach,
                thread(Some(TaskState::Connected))
            ),
            Disposition::Appended {
                task_id: "tsk_1".into()
            }
        );
        assert_eq!(
            decide(
                false,
                AutoReplyPolicy::Attach,
                thread(Some(TaskState::Concluded))
            ),
            Disposition::Reopened {
                conversation_id: "cnv_1".into()
            }
        );
        // Handled (in wrap-up): the customer's new words are new work.
        assert_eq!(
            decide(
                false,
                AutoReplyPolicy::Attach,
                thread(Some(TaskState::WrapUp))
            ),
            Disposition::Reopened {
                conversation_id: "cnv_1".into()
            }
        );
        assert_eq!(
            decide(false, AutoReplyPolicy::Attach, thread(None)),
            Disposition::Reopened {
                conversation_id: "cnv_1".into()
            }
        );
    }

    #[test]
    fn automatic_mail_follows_the_policy() {
        assert_eq!(
            decide(true, AutoReplyPolicy::Drop, thread(Some(TaskState::Queued))),
            Disposition::Recorded
        );
        assert_eq!(
            decide(
                true,
                AutoReplyPolicy::Attach,
                thread(Some(TaskState::Concluded))
            ),
            Disposition::Attached {
                conversation_id: "cnv_1".into(),
                task_id: Some("tsk_1".into())
            }
        );
        assert_eq!(
            decide(true, AutoReplyPolicy::Attach, None),
            Disposition::Recorded
        );
        assert_eq!(
            decide(true, AutoReplyPolicy::Queue, None),
            Disposition::Queued
        );
        assert!(
            !decide(
                true,
                AutoReplyPolicy::Attach,
                thread(Some(TaskState::Queued))
            )
            .creates_task()
        );
    }

    #[test]
    fn a_changed_uidvalidity_restarts_the_cursor() {
        let stored = MailboxCursor {
            uid_validity: 7,
            last_uid: 120,
        };
        assert_eq!(
            MailboxCursor::after_select(Some(stored), 7),
            (stored, false)
        );
        assert_eq!(
            MailboxCursor::after_select(Some(stored), 8),
            (
                MailboxCursor {
                    uid_validity: 8,
                    last_uid: 0
                },
                true
            )
        );
        assert_eq!(
            MailboxCursor::after_select(None, 3),
            (
                MailboxCursor {
                    uid_validity: 3,
                    last_uid: 0
                },
                false
            )
        );
    }

    #[test]
    fn the_address_reached_is_the_services_own_recipient() {
        let own = [
            "help@shop.example".to_string(),
            "billing@shop.example".to_string(),
        ];
        // The alias the customer wrote to, in To or in Cc.
        assert_eq!(
            address_reached(&["someone@else.example", "Billing@Shop.example"], &[], &own)
                .as_deref(),
            Some("billing@shop.example")
        );
        assert_eq!(
            address_reached(&["someone@else.example"], &["help@shop.example"], &own).as_deref(),
            Some("help@shop.example")
        );
        // Bcc (or a forward): the service's first address.
        assert_eq!(
            address_reached(&["list@else.example"], &[], &own).as_deref(),
            Some("help@shop.example")
        );
        // A service without addresses: the first To recipient, else nothing.
        assert_eq!(
            address_reached(&["Desk@Shop.example"], &[], &[]).as_deref(),
            Some("desk@shop.example")
        );
        assert_eq!(address_reached(&[], &[], &[]), None);
        let long = format!("{}@x.example", "a".repeat(400));
        assert_eq!(
            address_reached(&[long.as_str()], &[], &[]).map(|a| a.chars().count()),
            Some(320)
        );
    }
}
