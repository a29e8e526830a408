//! What a mailbox task is and what it runs with: the configured mailboxes
//! as jobs, the settings they share, how a sync fails, and how a backlog
//! is cut into batches. Used by the worker and by both sources.
use super::prepare::MailLimits;
use crate::adapters::imap::{ImapAccount, ImapError};
use crate::config::{Config, IngestConfig, MailboxKind};
use crate::store::{IngestReport, MailboxSpec, Store, StoreError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What to do on the server once a message is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterIngest {
    Seen,
    Move(String),
}

impl AfterIngest {
    pub fn parse(s: &str) -> AfterIngest {
        match s.strip_prefix("move:") {
            Some(folder) if !folder.is_empty() => AfterIngest::Move(folder.to_string()),
            _ => AfterIngest::Seen,
        }
    }
}

/// An IMAP mailbox: the account and the folder ingestion reads.
#[derive(Debug, Clone)]
pub struct ImapSource {
    pub account: ImapAccount,
    pub folder: String,
    pub after_ingest: AfterIngest,
}

#[derive(Debug, Clone)]
pub enum Source {
    Imap(ImapSource),
    Maildir(PathBuf),
}

/// One configured mailbox.
#[derive(Debug, Clone)]
pub struct MailboxJob {
    pub spec: MailboxSpec,
    pub source: Source,
}

/// The mailboxes of a configuration.
pub fn mailbox_jobs(config: &Config) -> Vec<MailboxJob> {
    config
        .mailboxes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let id = config.mailbox_id(i);
            let (source, description) = match m.kind {
                MailboxKind::Imap => {
                    let account = ImapAccount::from_config(m);
                    let description = format!(
                        "imap {}@{}:{}/{}",
                        account.username, account.host, account.port, m.folder
                    );
                    (
                        Source::Imap(ImapSource {
                            account,
                            folder: m.folder.clone(),
                            after_ingest: AfterIngest::parse(&m.after_ingest),
                        }),
                        description,
                    )
                }
                MailboxKind::Maildir => {
                    let path = m.path.clone().unwrap_or_default();
                    let description = format!("maildir {}", path.display());
                    (Source::Maildir(path), description)
                }
            };
            MailboxJob {
                spec: MailboxSpec {
                    id,
                    service_id: m.service.clone(),
                    kind: match m.kind {
                        MailboxKind::Imap => "imap".into(),
                        MailboxKind::Maildir => "maildir".into(),
                    },
                    description,
                },
                source,
            }
        })
        .collect()
}

/// Settings every mailbox task shares.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub store: Store,
    pub worker_id: String,
    pub limits: MailLimits,
    pub settings: IngestConfig,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Runtime {
    /// Adds the time since `since` to the ingestion `stage` (see
    /// [`crate::metrics::Metrics::ingest_stage_seconds`]).
    pub(crate) fn spent(&self, stage: &str, since: std::time::Instant) {
        self.metrics.ingest_stage(stage, since);
    }

    /// Logs a committed batch of `job` and counts the tasks it created.
    pub(crate) fn committed(&self, job: &MailboxJob, report: &IngestReport, last_uid: Option<u32>) {
        report.log(&job.spec.id, last_uid);
        self.metrics
            .ingest_outcomes(&job.spec.id, report.outcomes());
        if !report.new_tasks.is_empty() {
            self.metrics
                .tasks_created
                .with_label_values(&[job.spec.service_id.as_str(), "email", "mail"])
                .inc_by(report.new_tasks.len() as u64);
        }
    }

    /// How long one IMAP exchange may take.
    pub(crate) fn io_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.io_timeout_secs)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the maildir: {0}")]
    Io(#[from] std::io::Error),
}

impl SyncError {
    pub(crate) fn lease_lost(&self) -> bool {
        matches!(self, SyncError::Store(StoreError::LeaseLost(_)))
    }
}

/// Splits `uids` into groups whose total size stays under `max_bytes` (a
/// single larger message forms its own group).
pub fn byte_bounded_groups(
    uids: &[u32],
    sizes: &HashMap<u32, u64>,
    max_bytes: u64,
) -> Vec<Vec<u32>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0u64;
    for uid in uids {
        let size = sizes.get(uid).copied().unwrap_or(0);
        if !current.is_empty() && bytes + size > max_bytes {
            groups.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(*uid);
        bytes += size;
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_respect_the_byte_budget() {
        let sizes: HashMap<u32, u64> = [(1, 10), (2, 10), (3, 100), (4, 5), (5, 5)]
            .into_iter()
            .collect();
        assert_eq!(
            byte_bounded_groups(&[1, 2, 3, 4, 5], &sizes, 25),
            vec![vec![1, 2], vec![3], vec![4, 5]]
        );
        assert_eq!(byte_bounded_groups(&[], &sizes, 25), Vec::<Vec<u32>>::new());
    }

    #[test]
    fn after_ingest_actions_parse() {
        assert_eq!(AfterIngest::parse("seen"), AfterIngest::Seen);
        assert_eq!(
            AfterIngest::parse("move:Processed"),
            AfterIngest::Move("Processed".into())
        );
    }
}
