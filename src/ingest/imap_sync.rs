//! One sync of an IMAP mailbox: everything after the cursor fetched in
//! batches bounded by count and bytes, each parsed while the next is
//! fetched and committed while the one after is parsed (at most three in
//! memory), its server-side action (`\Seen`, a move) after its commit.
use super::job::{AfterIngest, ImapSource, MailboxJob, Runtime, SyncError, byte_bounded_groups};
use super::prepare::{CustomerMemo, Origin, prepare, too_large};
use crate::adapters::imap::{FetchedMessage, ImapError, ImapSession};
use crate::domain::ingest::MailboxCursor;
use crate::store::ownership::Fence;
use crate::store::{Incoming, IngestBatch, IngestReport, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The mailbox's server-side action on committed mail: `\Seen`, or a move.
pub(super) async fn after_ingest(
    session: &mut ImapSession,
    source: &ImapSource,
    uids: &[u32],
) -> Result<(), ImapError> {
    match &source.after_ingest {
        AfterIngest::Seen => session.mark_seen(uids).await,
        AfterIngest::Move(folder) => session.move_to(uids, folder).await,
    }
}

/// Fetches and commits everything after the cursor, in batches bounded by
/// count and bytes; each batch's server-side action runs after its commit.
/// One batch is parsed while the next is fetched, and commits while the one
/// after is parsed.
pub(super) async fn sync_new_mail(
    runtime: &Runtime,
    job: &MailboxJob,
    fence: &Fence,
    source: &ImapSource,
    session: &mut ImapSession,
    cursor: &mut MailboxCursor,
    stop: &watch::Receiver<bool>,
) -> Result<(), SyncError> {
    let mut sync = Syncing {
        runtime,
        job,
        fence,
        source,
        session,
        cursor,
        stop,
        committing: None,
    };
    let result = sync.batches().await;
    // On failure, a commit still in flight is waited for, so that it cannot
    // land after a reconnected session has moved on; its server-side action
    // is repeated on the next sync (`flagged_uid`).
    if let Some(pending) = sync.committing.take()
        && let Ok(Ok(report)) = pending.commit.await
    {
        *sync.cursor = pending.cursor;
        runtime.committed(job, &report, Some(pending.cursor.last_uid));
    }
    result
}

/// One sync of a mailbox over its session: what it works with, and the
/// batch committing in the background.
struct Syncing<'a> {
    runtime: &'a Runtime,
    job: &'a MailboxJob,
    fence: &'a Fence,
    source: &'a ImapSource,
    session: &'a mut ImapSession,
    /// The mailbox's cursor: moved as each batch commits.
    cursor: &'a mut MailboxCursor,
    /// Shutdown, or the mailbox taken over: the sync ends after the batch
    /// committing, and what was fetched after it is fetched again later.
    stop: &'a watch::Receiver<bool>,
    committing: Option<PendingBatch>,
}

impl Syncing<'_> {
    async fn batches(&mut self) -> Result<(), SyncError> {
        let (runtime, id) = (self.runtime, &self.job.spec.id);
        let memo = Arc::new(CustomerMemo::default());
        loop {
            let uids = self.session.uids_after(self.cursor.last_uid).await?;
            if uids.is_empty() {
                return Ok(());
            }
            runtime
                .store
                .set_mailbox_status(
                    id,
                    "syncing",
                    self.session.supports_idle(),
                    uids.len() as i64,
                )
                .await?;
            // At most three groups in memory: one fetched, one parsed, one
            // committing.
            let mut preparing: Option<PreparingGroup> = None;
            let mut last = self.cursor.last_uid;
            for chunk in uids.chunks(runtime.settings.batch_size.max(1)) {
                let started = std::time::Instant::now();
                let sizes: HashMap<u32, u64> = self
                    .session
                    .message_sizes(chunk)
                    .await?
                    .into_iter()
                    .map(|(uid, size)| (uid, u64::from(size)))
                    .collect();
                runtime.spent("fetch", started);
                for group in byte_bounded_groups(chunk, &sizes, runtime.settings.batch_bytes) {
                    if *self.stop.borrow() {
                        // Neither the group being parsed nor this one is
                        // committed: the cursor stays before them.
                        drop(preparing.take());
                        if let Some(previous) = self.committing.take() {
                            self.finish(previous).await?;
                        }
                        return Ok(());
                    }
                    let (small, large): (Vec<u32>, Vec<u32>) = group.iter().partition(|uid| {
                        sizes.get(uid).copied().unwrap_or(0) <= runtime.limits.max_message_bytes
                    });
                    let started = std::time::Instant::now();
                    let fetched = if small.is_empty() {
                        Vec::new()
                    } else {
                        self.session.fetch(&small).await?
                    };
                    runtime.spent("fetch", started);
                    let folder = &self.source.folder;
                    let large: Vec<Incoming> = large
                        .iter()
                        .map(|uid| {
                            let origin = Origin {
                                uid: Some(*uid),
                                source_ref: Some(format!("{folder}:{uid}")),
                            };
                            let size = sizes.get(uid).copied().unwrap_or(0);
                            too_large(
                                origin,
                                size,
                                &runtime.limits,
                                &format!("folder {folder} on the server, UID {uid}"),
                            )
                        })
                        .collect();
                    last = group.iter().copied().max().unwrap_or(last);
                    let next = PreparingGroup {
                        items: spawn_prepare(runtime, &memo, folder, fetched),
                        large,
                        cursor: MailboxCursor {
                            uid_validity: self.cursor.uid_validity,
                            last_uid: last,
                        },
                        fetched: small,
                    };
                    if let Some(group) = preparing.replace(next) {
                        self.commit_group(group).await?;
                    }
                }
            }
            if let Some(group) = preparing.take() {
                self.commit_group(group).await?;
            }
            if let Some(previous) = self.committing.take() {
                self.finish(previous).await?;
            }
        }
    }

    /// Takes a parsed group as a batch: its raw sources are written at once
    /// (on other connections on PostgreSQL, by the sources file's own writer
    /// on SQLite) while the previous batch finishes committing; then its own
    /// commit starts in the background.
    async fn commit_group(&mut self, mut group: PreparingGroup) -> Result<(), SyncError> {
        let mut items = (&mut group.items.0).await.map_err(|e| {
            SyncError::Store(StoreError::Corrupt(format!(
                "parsing a batch of mail stopped: {e}"
            )))
        })??;
        items.extend(std::mem::take(&mut group.large));
        let mut batch = IngestBatch {
            mailbox_id: self.job.spec.id.clone(),
            service_id: self.job.spec.service_id.clone(),
            fence: Some(self.fence.clone()),
            cursor: Some(group.cursor),
            items,
            resolves_quarantine: None,
        };
        let staging = {
            let store = self.runtime.store.clone();
            let metrics = self.runtime.metrics.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                if let Err(e) = store.stage_sources(&mut batch).await {
                    // Not lost: the sources then go with their batch.
                    tracing::warn!(mailbox = %batch.mailbox_id, error = %e, "cannot write raw sources ahead of their batch");
                }
                metrics.ingest_stage("sources", started);
                batch
            })
        };
        // The previous batch was committing while this one was fetched and
        // parsed; finish it (and its server-side action) first, so batches
        // commit in order.
        if let Some(previous) = self.committing.take() {
            self.finish(previous).await?;
        }
        let store = self.runtime.store.clone();
        let metrics = self.runtime.metrics.clone();
        self.committing = Some(PendingBatch {
            commit: tokio::spawn(async move {
                let batch = staging.await.map_err(|e| {
                    StoreError::Corrupt(format!("writing the batch's raw sources failed: {e}"))
                })?;
                let started = std::time::Instant::now();
                let report = store.commit_batch_resilient(&batch).await;
                metrics.ingest_stage("commit", started);
                report
            }),
            cursor: group.cursor,
            fetched: group.fetched,
        });
        Ok(())
    }

    /// Waits for a batch's commit, then runs its after-ingest action. A
    /// crash between the two only repeats the action, never the task.
    async fn finish(&mut self, batch: PendingBatch) -> Result<(), SyncError> {
        let runtime = self.runtime;
        let started = std::time::Instant::now();
        let report = match batch.commit.await {
            Ok(result) => result?,
            Err(e) => {
                return Err(SyncError::Store(StoreError::Corrupt(format!(
                    "the commit of a batch stopped: {e}"
                ))));
            }
        };
        runtime.spent("wait", started);
        *self.cursor = batch.cursor;
        runtime.committed(self.job, &report, Some(batch.cursor.last_uid));
        let started = std::time::Instant::now();
        if !batch.fetched.is_empty() {
            after_ingest(self.session, self.source, &batch.fetched).await?;
        }
        runtime.spent("after", started);
        runtime
            .store
            .set_flagged_uid(&self.job.spec.id, self.fence, batch.cursor.last_uid)
            .await?;
        Ok(())
    }
}

/// A group of fetched mail being parsed while the next is fetched.
struct PreparingGroup {
    /// The group's parsed mail, in the order fetched.
    items: AbortOnDrop<Result<Vec<Incoming>, StoreError>>,
    /// Quarantine entries for the group's mail too large to fetch.
    large: Vec<Incoming>,
    /// The mailbox's cursor once the group is committed.
    cursor: MailboxCursor,
    /// UIDs fetched (too-large mail is left as it is on the server).
    fetched: Vec<u32>,
}

/// A task stopped when its handle is dropped before it was awaited: a sync
/// that failed midway (a lost lease, a broken connection) does not go on
/// parsing a group it will fetch again.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Parses `fetched` in a task of its own: each mail on the blocking pool,
/// side by side (order is kept), so every core works while the next group
/// is fetched.
fn spawn_prepare(
    runtime: &Runtime,
    memo: &Arc<CustomerMemo>,
    folder: &str,
    fetched: Vec<FetchedMessage>,
) -> AbortOnDrop<Result<Vec<Incoming>, StoreError>> {
    let store = runtime.store.clone();
    let memo = Arc::clone(memo);
    let limits = runtime.limits;
    let metrics = runtime.metrics.clone();
    let folder = folder.to_string();
    AbortOnDrop(tokio::spawn(async move {
        let started = std::time::Instant::now();
        let prepared = futures_util::future::join_all(fetched.into_iter().map(|m| {
            let origin = Origin {
                uid: Some(m.uid),
                source_ref: Some(format!("{folder}:{}", m.uid)),
            };
            prepare(&store, &memo, m.raw, origin, &limits)
        }))
        .await;
        metrics.ingest_stage("prepare", started);
        prepared.into_iter().collect()
    }))
}

/// A batch whose commit runs in the background while the next is prepared.
struct PendingBatch {
    commit: JoinHandle<Result<IngestReport, StoreError>>,
    cursor: MailboxCursor,
    /// UIDs fetched and stored (too-large mail is left as it is on the server).
    fetched: Vec<u32>,
}
