//! A local Maildir as a mailbox: mail delivered to `new/` is committed, then
//! moved to `cur/` with the Seen flag. A crash between the two only repeats
//! the move: the mail is recognised by its content and not ingested twice.
use super::backoff::Backoff;
use super::prepare::{Origin, prepare, too_large};
use super::worker::{MailboxJob, Runtime, SyncError};
use crate::store::ownership::Fence;
use crate::store::{Incoming, IngestBatch};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Creates `new/`, `cur/` and `tmp/` under `root` if missing.
pub fn ensure_layout(root: &Path) -> std::io::Result<()> {
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    Ok(())
}

/// The name a delivered file gets in `cur/`: its info part with the Seen flag.
pub fn seen_name(name: &str) -> String {
    match name.split_once(":2,") {
        Some((base, flags)) if flags.contains('S') => format!("{base}:2,{flags}"),
        Some((base, flags)) => {
            let mut f: Vec<char> = flags.chars().chain(['S']).collect();
            f.sort_unstable();
            format!("{base}:2,{}", f.into_iter().collect::<String>())
        }
        None => format!("{name}:2,S"),
    }
}

/// Files waiting in `new/`, oldest name first (Maildir names start with the
/// delivery time). A file written into `new/` less than `settle` ago is only
/// taken once a scan saw it at the same size before (`growing` holds the sizes
/// seen, and is updated): a writer that skips `tmp/` cannot have its mail cut
/// short. Mail delivered through `tmp/` waits at most one scan more.
fn waiting(
    root: &Path,
    settle: Duration,
    growing: &mut HashMap<String, u64>,
) -> std::io::Result<Vec<(String, u64)>> {
    let now = SystemTime::now();
    let mut seen = HashMap::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("new"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let fresh = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_none_or(|age| age < settle);
        if fresh && growing.get(&name) != Some(&meta.len()) {
            seen.insert(name, meta.len());
            continue;
        }
        files.push((name, meta.len()));
    }
    *growing = seen;
    files.sort();
    Ok(files)
}

pub async fn run(
    runtime: &Runtime,
    job: &MailboxJob,
    fence: &Fence,
    root: &Path,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SyncError> {
    let id = &job.spec.id;
    let mut backoff = Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(runtime.settings.max_backoff_secs),
    );
    let mut growing = HashMap::new();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match scan_once(runtime, job, fence, root, &mut growing).await {
            Ok(()) => {
                backoff.reset();
                runtime
                    .store
                    .set_mailbox_status(id, "polling", false, 0)
                    .await?;
                // A file still settling is looked at again soon.
                let mut pause = Duration::from_millis(runtime.settings.maildir_scan_ms);
                if !growing.is_empty() {
                    pause = pause.min(Duration::from_millis(250));
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(e) if e.lease_lost() => {
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(mailbox = %id, error = %e, "maildir sync failed; will retry");
                let _ = runtime.store.record_mailbox_error(id, &e.to_string()).await;
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

async fn scan_once(
    runtime: &Runtime,
    job: &MailboxJob,
    fence: &Fence,
    root: &Path,
    growing: &mut HashMap<String, u64>,
) -> Result<(), SyncError> {
    let id = &job.spec.id;
    let store = &runtime.store;
    let settle = Duration::from_millis(runtime.settings.maildir_settle_ms);
    let files = waiting(root, settle, growing)?;
    if files.is_empty() {
        return Ok(());
    }
    store
        .set_mailbox_status(id, "syncing", false, files.len() as i64)
        .await?;
    let memo = super::prepare::CustomerMemo::default();
    for chunk in files.chunks(runtime.settings.batch_size.max(1)) {
        let started = std::time::Instant::now();
        // Each file is read, then the chunk is prepared side by side (order kept).
        let mut pending: Vec<Result<Incoming, (Origin, Vec<u8>)>> = Vec::with_capacity(chunk.len());
        let mut done = Vec::with_capacity(chunk.len());
        for (name, size) in chunk {
            let path = root.join("new").join(name);
            let origin = Origin {
                uid: None,
                source_ref: Some(name.clone()),
            };
            if *size > runtime.limits.max_message_bytes {
                let kept = root.join("cur").join(seen_name(name));
                pending.push(Ok(too_large(
                    origin,
                    *size,
                    &runtime.limits,
                    &kept.display().to_string(),
                )));
            } else {
                let raw = match tokio::fs::read(&path).await {
                    Ok(raw) => raw,
                    // Taken away meanwhile (another reader): nothing to do.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                pending.push(Err((origin, raw)));
            }
            done.push(name.clone());
        }
        let prepared = futures_util::future::join_all(pending.into_iter().map(|p| async {
            match p {
                Ok(ready) => Ok(ready),
                Err((origin, raw)) => prepare(store, &memo, raw, origin, &runtime.limits).await,
            }
        }))
        .await;
        let mut items = Vec::with_capacity(prepared.len());
        for item in prepared {
            items.push(item?);
        }
        runtime.spent("prepare", started);
        let started = std::time::Instant::now();
        let report = store
            .commit_batch_resilient(&IngestBatch {
                mailbox_id: id.clone(),
                service_id: job.spec.service_id.clone(),
                fence: Some(fence.clone()),
                cursor: None,
                items,
                resolves_quarantine: None,
            })
            .await?;
        runtime.spent("commit", started);
        runtime.committed(job, &report, None);
        // Only after the commit.
        for name in done {
            let from = root.join("new").join(&name);
            let to = root.join("cur").join(seen_name(&name));
            if let Err(e) = tokio::fs::rename(&from, &to).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Duration, HashMap, ensure_layout, seen_name, waiting};
    use std::io::Write;

    #[test]
    fn a_file_still_growing_in_new_waits() {
        let dir = tempfile::tempdir().unwrap();
        ensure_layout(dir.path()).unwrap();
        let path = dir.path().join("new").join("1.a.host");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"Subject: half").unwrap();
        let mut growing = HashMap::new();
        assert!(
            waiting(dir.path(), Duration::from_secs(60), &mut growing)
                .unwrap()
                .is_empty(),
            "first sight"
        );
        file.write_all(b" and the rest\r\n\r\nbody\r\n").unwrap();
        assert!(
            waiting(dir.path(), Duration::from_secs(60), &mut growing)
                .unwrap()
                .is_empty(),
            "it grew"
        );
        let files = waiting(dir.path(), Duration::from_secs(60), &mut growing).unwrap();
        assert_eq!(files, vec![("1.a.host".to_string(), 36)], "settled");
        assert!(growing.is_empty());
    }

    #[test]
    fn seen_flag_is_added_once() {
        assert_eq!(seen_name("123.abc.host"), "123.abc.host:2,S");
        assert_eq!(seen_name("123.abc.host:2,F"), "123.abc.host:2,FS");
        assert_eq!(seen_name("123.abc.host:2,S"), "123.abc.host:2,S");
    }
}
