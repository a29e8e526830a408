//! The ingestion worker: a supervisor that takes mailbox leases, and one task
//! per held mailbox that owns its connection, syncs, commits and waits for more
//! (IMAP IDLE where offered, polling otherwise).
use super::backoff::Backoff;
use super::maildir;
use super::prepare::MailLimits;
use crate::adapters::imap::{IdleOutcome, ImapAccount, ImapError, ImapSession};
use crate::config::{Config, IngestConfig, MailboxKind};
use crate::domain::ingest::MailboxCursor;
use crate::store::ownership::{Fence, Ownership};
use crate::store::{IngestReport, MailboxSpec, Store, StoreError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

    fn io_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.io_timeout_secs)
    }
}

/// Registers the configured mailboxes and syncs each one this worker owns
/// (see [`crate::supervise::run_owned`]) until `shutdown`.
pub async fn start(
    store: Store,
    ownership: Ownership,
    config: &Config,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let jobs = mailbox_jobs(config);
    for job in &jobs {
        store.register_mailbox(&job.spec).await?;
    }
    let runtime = Arc::new(Runtime {
        store,
        worker_id: ownership.worker_id().to_string(),
        limits: MailLimits {
            max_message_bytes: config.ingest.max_message_bytes,
            parse_timeout: Duration::from_secs(config.ingest.parse_timeout_secs),
        },
        settings: config.ingest.clone(),
        metrics,
    });
    tracing::info!(worker = %runtime.worker_id, mailboxes = jobs.len(), "ingestion starting");
    let ids = jobs.iter().map(|j| j.spec.id.clone()).collect();
    let jobs: Arc<HashMap<String, MailboxJob>> =
        Arc::new(jobs.into_iter().map(|j| (j.spec.id.clone(), j)).collect());
    Ok(tokio::spawn(async move {
        let worker = runtime.worker_id.clone();
        crate::supervise::run_owned(ownership, MAILBOX, ids, shutdown, move |id, fence, stop| {
            let runtime = Arc::clone(&runtime);
            let job = jobs.get(&id).cloned();
            async move {
                if let Some(job) = job {
                    run_mailbox(runtime, job, fence, stop).await;
                }
            }
        })
        .await;
        tracing::info!(worker = %worker, "ingestion stopped");
    }))
}

/// The ownership kind of mailboxes.
pub const MAILBOX: &str = "mailbox";

/// Syncs one owned mailbox until `stop` (shutdown or ownership lost) or
/// until its fence fails (another worker took it over).
async fn run_mailbox(
    runtime: Arc<Runtime>,
    job: MailboxJob,
    fence: Fence,
    stop: watch::Receiver<bool>,
) {
    let id = job.spec.id.clone();
    if let Err(e) = runtime.store.mailbox_owned(&id, &runtime.worker_id).await {
        tracing::warn!(mailbox = %id, error = %e, "cannot record the mailbox's owner");
    }
    let result = match &job.source {
        Source::Imap(source) => run_imap(&runtime, &job, &fence, source, stop).await,
        Source::Maildir(path) => maildir::run(&runtime, &job, &fence, path, stop).await,
    };
    if let Err(e) = result {
        tracing::warn!(mailbox = %id, error = %e, "mailbox stopped");
    }
    if let Err(e) = runtime
        .store
        .mailbox_released(&id, &runtime.worker_id)
        .await
    {
        tracing::warn!(mailbox = %id, error = %e, "cannot record the mailbox's release");
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

/// Keeps an IMAP mailbox in sync until stopped: connect, catch up, wait for
/// more; on any failure record it, back off and reconnect.
async fn run_imap(
    runtime: &Runtime,
    job: &MailboxJob,
    fence: &Fence,
    source: &ImapSource,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SyncError> {
    let id = &job.spec.id;
    let mut backoff = Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(runtime.settings.max_backoff_secs),
    );
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match imap_session(runtime, job, fence, source, &mut stop, &mut backoff).await {
            Ok(()) => return Ok(()),
            Err(e) if e.lease_lost() => return Err(e),
            Err(e) => {
                tracing::warn!(mailbox = %id, error = %e, "mailbox sync failed; will reconnect");
                let _ = runtime.store.record_mailbox_error(id, &e.to_string()).await;
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

async fn imap_session(
    runtime: &Runtime,
    job: &MailboxJob,
    fence: &Fence,
    source: &ImapSource,
    stop: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<(), SyncError> {
    let id = &job.spec.id;
    let store = &runtime.store;
    store.set_mailbox_status(id, "connecting", false, 0).await?;
    let mut session = source.account.connect(runtime.io_timeout()).await?;
    let push = session.supports_idle();
    let result = async {
        let mut cursor = select_and_check(runtime, id, fence, source, &mut session).await?;
        backoff.reset();
        tracing::info!(mailbox = %id, push, uid_validity = cursor.uid_validity, last_uid = cursor.last_uid, "mailbox connected");
        loop {
            super::imap_sync::sync_new_mail(runtime, job, fence, source, &mut session, &mut cursor)
                .await?;
            if *stop.borrow() {
                return Ok(());
            }
            if push {
                store.set_mailbox_status(id, "idle", true, 0).await?;
                let renew = Duration::from_secs(runtime.settings.idle_renew_secs);
                match session.idle(renew, stop).await? {
                    IdleOutcome::Shutdown => return Ok(()),
                    IdleOutcome::NewData => {}
                    // Re-select now and then: a folder deleted and recreated shows a new UIDVALIDITY.
                    IdleOutcome::Timeout => cursor = select_and_check(runtime, id, fence, source, &mut session).await?,
                }
            } else {
                store.set_mailbox_status(id, "polling", false, 0).await?;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(runtime.settings.poll_interval_secs)) => {}
                    _ = stop.changed() => return Ok(()),
                }
                cursor = select_and_check(runtime, id, fence, source, &mut session).await?;
            }
        }
    }
    .await;
    session.logout().await;
    result
}

/// Selects the folder, resets the cursor on a UIDVALIDITY change, and repeats
/// any after-ingest action a crash left undone.
async fn select_and_check(
    runtime: &Runtime,
    id: &str,
    fence: &Fence,
    source: &ImapSource,
    session: &mut ImapSession,
) -> Result<MailboxCursor, SyncError> {
    let store = &runtime.store;
    let status = session.select(&source.folder).await?;
    let stored = store.mailbox_cursor(id).await?;
    let (cursor, resync) = MailboxCursor::after_select(stored, status.uid_validity);
    if resync || stored.is_none() {
        if resync {
            tracing::warn!(mailbox = %id, uid_validity = status.uid_validity, "UIDVALIDITY changed: resyncing, deduplicated by content");
        }
        store.reset_cursor(id, fence, cursor).await?;
    }
    let flagged = store.flagged_uid(id).await?;
    if flagged < cursor.last_uid {
        let pending: Vec<u32> = session
            .uids_after(flagged)
            .await?
            .into_iter()
            .filter(|u| *u <= cursor.last_uid)
            .collect();
        if !pending.is_empty() {
            tracing::info!(mailbox = %id, count = pending.len(), "repeating after-ingest action left undone");
            super::imap_sync::after_ingest(session, source, &pending).await?;
        }
        store.set_flagged_uid(id, fence, cursor.last_uid).await?;
    }
    Ok(cursor)
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
