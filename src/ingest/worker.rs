//! The ingestion worker: a supervisor that takes mailbox leases, and one task
//! per held mailbox that owns its connection, syncs, commits and waits for more
//! (IMAP IDLE where offered, polling otherwise).
use super::backoff::Backoff;
pub use super::job::{
    AfterIngest, ImapSource, MailboxJob, Runtime, Source, SyncError, byte_bounded_groups,
    mailbox_jobs,
};
use super::maildir;
use super::prepare::MailLimits;
use crate::adapters::imap::{IdleOutcome, ImapSession};
use crate::config::Config;
use crate::domain::ingest::MailboxCursor;
use crate::store::Store;
use crate::store::ownership::{Fence, Ownership};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
            super::imap_sync::sync_new_mail(
                runtime,
                job,
                fence,
                source,
                &mut session,
                &mut cursor,
                stop,
            )
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
