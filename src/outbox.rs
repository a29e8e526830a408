//! The outbox worker: sends queued replies through SMTP, once.
//!
//! A draft is claimed by exactly one worker (row lock on PostgreSQL, the write
//! lock on SQLite) for a lease longer than any send can take; its Message-ID
//! was fixed when it was queued, so a retry after a crash between the server's
//! acceptance and our record re-sends the same message, never a different one.
use crate::adapters::imap::ImapAccount;
use crate::adapters::smtp::{OutgoingAttachment, OutgoingMail, Sender, to_bytes};
use crate::config::{Config, MailboxKind};
use crate::store::{Draft, SentRecord, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// How the outbox is run.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub worker_id: String,
    pub retry_base: Duration,
    pub max_attempts: u32,
    pub lease: Duration,
    /// Per service, the IMAP folder that keeps copies of its replies.
    pub sent_copies: Vec<SentFolder>,
    pub imap_timeout: Duration,
    /// Replies sent at once (the SMTP pool size).
    pub concurrency: usize,
    /// Where each attempt's result is counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The Sent folder of a service: where its replies are appended.
#[derive(Debug, Clone)]
pub struct SentFolder {
    pub service: String,
    pub account: ImapAccount,
    pub folder: String,
}

/// The Sent folders of a configuration's IMAP mailboxes.
pub fn sent_folders(config: &Config) -> Vec<SentFolder> {
    config
        .mailboxes
        .iter()
        .filter(|m| m.kind == MailboxKind::Imap)
        .filter_map(|m| {
            Some(SentFolder {
                service: m.service.clone(),
                account: ImapAccount::from_config(m),
                folder: m.sent_folder.clone()?,
            })
        })
        .collect()
}

/// Starts the outbox when the configuration has `[smtp]`.
pub fn start(
    store: Store,
    config: &Config,
    notify: Arc<Notify>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(smtp) = &config.smtp else {
        return Ok(None);
    };
    if let Some(dir) = &smtp.file {
        std::fs::create_dir_all(dir)?;
    }
    let mut sender = Sender::new(crate::adapters::smtp::transport(smtp))
        .map_err(|e| anyhow::anyhow!("cannot set up sending: {e}"))?;
    match crate::adapters::smtp::dkim_signer(smtp) {
        Ok(Some(signer)) => {
            tracing::info!(domain = signer.domain(), selector = signer.selector(), algorithm = %signer.algorithm(), "replies are DKIM-signed");
            sender = sender.with_dkim(signer);
        }
        Ok(None) => {}
        Err(problems) => {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            anyhow::bail!("cannot set up DKIM signing: {}", text.join("; "));
        }
    }
    let settings = OutboxSettings {
        worker_id: config
            .ingest
            .worker_id
            .clone()
            .unwrap_or_else(crate::store::ownership::default_worker_id),
        retry_base: Duration::from_secs(smtp.retry_base_secs),
        max_attempts: smtp.max_attempts,
        lease: Duration::from_secs((smtp.timeout_secs * 4).max(10)),
        sent_copies: sent_folders(config),
        imap_timeout: Duration::from_secs(config.ingest.io_timeout_secs),
        concurrency: smtp.pool_max as usize,
        metrics,
    };
    // Every result shows from the start, at 0.
    for result in ["sent", "retry", "failed"] {
        settings.metrics.replies.with_label_values(&[result]);
    }
    Ok(Some(tokio::spawn(run(
        store, sender, settings, notify, shutdown,
    ))))
}

/// The delay before attempt `attempts + 1`: base × 2^(attempts − 1), at most an hour.
pub fn retry_delay(base: Duration, attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    base.saturating_mul(1u32 << exp)
        .min(Duration::from_secs(3600))
}

/// Claims due replies while a send slot is free, each sent in a task of its
/// own; when none is due, waits for a notification (a reply was queued), the
/// next poll, or shutdown.
///
/// One claim loop: claims are short, and several loops side by side were
/// measured slower (benches/README.md, send): each idle loop's empty claims
/// cost two statements and compete with the sends for the database.
async fn run(
    store: Store,
    sender: Sender,
    settings: OutboxSettings,
    notify: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::info!(worker = %settings.worker_id, concurrency = settings.concurrency, "outbox started");
    let settings = Arc::new(settings);
    // As many replies in flight as the SMTP pool has connections.
    let permits = Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1)));
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        if *shutdown.borrow() {
            break;
        }
        // A slot first: a claimed reply is sent at once, its lease running.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            changed = shutdown.changed() => if changed.is_err() { break } else { continue },
        };
        match store
            .claim_due_draft(&settings.worker_id, settings.lease.as_millis() as i64)
            .await
        {
            Ok(Some(draft)) => {
                let (store, sender, settings) =
                    (store.clone(), sender.clone(), Arc::clone(&settings));
                in_flight.spawn(async move {
                    send_one(&store, &sender, &settings, draft).await;
                    drop(permit);
                });
            }
            Ok(None) => {
                drop(permit);
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    // A dropped shutdown sender means shutdown too (and would
                    // otherwise turn this into a busy loop).
                    changed = shutdown.changed() => if changed.is_err() { break },
                }
            }
            Err(e) => {
                drop(permit);
                tracing::warn!(error = %e, "outbox cannot claim work");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    changed = shutdown.changed() => if changed.is_err() { break },
                }
            }
        }
    }
    // Replies already handed to the server finish; unclaimed ones wait for the next start.
    while in_flight.join_next().await.is_some() {}
    tracing::info!("outbox stopped");
}

async fn outgoing(store: &Store, d: &Draft) -> Result<OutgoingMail, String> {
    let message_id = d.message_id.clone().ok_or("the draft has no Message-ID")?;
    // The claimed draft lists its attachments: no query when it has none.
    let stored = if d.attachments.is_empty() {
        Vec::new()
    } else {
        store
            .draft_attachment_bytes(&d.id)
            .await
            .map_err(|e| e.to_string())?
    };
    // An address typed twice (in any case, in any field) is mailed once.
    let (to, cc, bcc) = crate::mail::compose::unique_recipients(&d.to, &d.cc, &d.bcc);
    let attachments = stored
        .into_iter()
        .map(|(meta, bytes)| OutgoingAttachment {
            filename: meta.filename,
            content_type: meta.content_type,
            bytes,
            content_id: meta.content_id,
        })
        .collect();
    Ok(OutgoingMail {
        from: d.from.clone(),
        to,
        cc,
        bcc,
        reply_to: None,
        subject: d.subject.clone(),
        message_id,
        in_reply_to: d.in_reply_to.clone(),
        references: d.references.clone(),
        // Fixed at queueing, like the Message-ID: a retry is the same message.
        date: chrono::DateTime::from_timestamp_millis(d.queued_at.unwrap_or(d.created_at))
            .unwrap_or_default(),
        text: d.body_text.clone(),
        html: (!d.body_html.trim().is_empty()).then(|| d.body_html.clone()),
        attachments,
        auto_submitted: false,
    })
}

async fn send_one(store: &Store, sender: &Sender, settings: &OutboxSettings, d: Draft) {
    let owner = &settings.worker_id;
    let mail = match outgoing(store, &d).await {
        Ok(m) => m,
        Err(e) => {
            settings.metrics.reply_attempt("failed");
            let _ = store.mark_draft_failed(&d.id, owner, &e).await;
            return;
        }
    };
    let sent_copy = settings
        .sent_copies
        .iter()
        .find(|s| s.service == d.service_id);
    // A retry: the previous attempt may have gone out before we could record it.
    if d.attempts > 1
        && let Some(src) = sent_copy
        && sent_folder_has(src, settings.imap_timeout, &mail.message_id).await
    {
        tracing::info!(draft = %d.id, message_id = %mail.message_id, "reply found in the Sent folder: not sent again");
        // The message as built, unsigned: a DKIM signature made now would
        // differ (t=, b=) from the one that went out; the Sent copy has that.
        let raw = to_bytes(&mail).unwrap_or_default();
        let record = SentRecord {
            raw,
            smtp_response: "found in the Sent folder after an interruption; not sent again".into(),
        };
        if store.mark_draft_sent(&d, owner, &record).await.is_ok() {
            settings.metrics.reply_attempt("sent");
            conclude_if_asked(store, &d).await;
        }
        return;
    }
    // Built, signed and formatted once: the bytes sent are the bytes kept
    // (Sent copy and record).
    let prepared = match sender.prepare(&mail) {
        Ok(prepared) => prepared,
        Err(e) => {
            tracing::warn!(draft = %d.id, error = %e, "reply cannot be built");
            settings.metrics.reply_attempt("failed");
            let _ = store.mark_draft_failed(&d.id, owner, &e.to_string()).await;
            return;
        }
    };
    match sender.send_prepared(&prepared).await {
        Ok(response) => {
            tracing::info!(draft = %d.id, message_id = %mail.message_id, attempt = d.attempts, "reply sent");
            settings.metrics.reply_attempt("sent");
            let raw = prepared.into_bytes();
            if let Some(src) = sent_copy {
                append_sent_copy(src, settings.imap_timeout, &raw).await;
            }
            if let Err(e) = store
                .mark_draft_sent(
                    &d,
                    owner,
                    &SentRecord {
                        raw,
                        smtp_response: response,
                    },
                )
                .await
            {
                // The server has it; the claim will expire and the same message
                // (same Message-ID) may be offered once more.
                tracing::error!(draft = %d.id, error = %e, "reply sent but not recorded");
                return;
            }
            conclude_if_asked(store, &d).await;
        }
        Err(e) if e.is_transient() && d.attempts < i64::from(settings.max_attempts) => {
            let delay = retry_delay(settings.retry_base, d.attempts);
            tracing::warn!(draft = %d.id, error = %e, retry_in = ?delay, "reply not sent yet; will retry");
            settings.metrics.reply_attempt("retry");
            let next = crate::domain::now_millis() + delay.as_millis() as i64;
            let _ = store
                .mark_draft_retry(&d.id, owner, &e.to_string(), next)
                .await;
        }
        Err(e) => {
            tracing::warn!(draft = %d.id, error = %e, "reply failed");
            settings.metrics.reply_attempt("failed");
            let _ = store.mark_draft_failed(&d.id, owner, &e.to_string()).await;
        }
    }
}

/// Whether the Sent folder already holds a message with this Message-ID
/// (false when it cannot be checked: then the same message goes out again).
async fn sent_folder_has(sent: &SentFolder, timeout: Duration, message_id: &str) -> bool {
    let result = async {
        let mut session = sent
            .account
            .connect(timeout)
            .await
            .map_err(|e| e.to_string())?;
        let found = session
            .contains_message_id(&sent.folder, message_id)
            .await
            .map_err(|e| e.to_string());
        session.logout().await;
        found
    }
    .await;
    result.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot check the Sent folder");
        false
    })
}

/// Appends the sent reply to the Sent folder (best effort: the reply is out).
async fn append_sent_copy(sent: &SentFolder, timeout: Duration, raw: &[u8]) {
    let folder = &sent.folder;
    let result = async {
        let mut session = sent
            .account
            .connect(timeout)
            .await
            .map_err(|e| e.to_string())?;
        let done = session
            .append(folder, "(\\Seen)", raw)
            .await
            .map_err(|e| e.to_string());
        session.logout().await;
        done
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(folder, error = %e, "cannot append the Sent copy");
    }
}

/// With the service's `conclude_on_send`, a sent reply ends the agent's part.
async fn conclude_if_asked(store: &Store, d: &Draft) {
    let Ok(service) = store.service(&d.service_id).await else {
        return;
    };
    if !service.settings.conclude_on_send {
        return;
    }
    if let Ok(agent) = store.agent(&d.agent_id).await
        && let Err(e) = store.mark_handled(&d.task_id, &agent).await
    {
        tracing::info!(task = %d.task_id, error = %e, "task not concluded on send");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_an_hour() {
        let base = Duration::from_secs(30);
        assert_eq!(retry_delay(base, 1), Duration::from_secs(30));
        assert_eq!(retry_delay(base, 2), Duration::from_secs(60));
        assert_eq!(retry_delay(base, 20), Duration::from_secs(3600));
    }
}
