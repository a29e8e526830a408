//! A local Maildir as a mailbox: mail delivered to `new/` is committed, then
//! moved to `cur/` with the Seen flag. A crash between the two only repeats
//! the move: the mail is recognised by its content and not ingested twice.
use super::backoff::Backoff;
use super::job::{MailboxJob, Runtime, SyncError};
use super::prepare::{Origin, prepare, too_large};
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

/// The longest file name most file systems take, in bytes.
const NAME_MAX: usize = 255;

/// The name a delivered file gets in `cur/`: its info part with the Seen
/// flag. A name that would then be too long for the file system keeps the
/// start of its unique part and a hash of the whole.
pub fn seen_name(name: &str) -> String {
    let (base, flags) = match name.split_once(":2,") {
        Some((base, flags)) if flags.contains('S') => (base, flags.to_string()),
        Some((base, flags)) => {
            let mut f: Vec<char> = flags.chars().chain(['S']).collect();
            f.sort_unstable();
            (base, f.into_iter().collect::<String>())
        }
        None => (name, "S".to_string()),
    };
    let info = format!(":2,{flags}");
    if base.len() + info.len() <= NAME_MAX {
        return format!("{base}{info}");
    }
    use sha2::Digest;
    let hash = hex::encode(&sha2::Sha256::digest(name.as_bytes())[..8]);
    let mut keep = NAME_MAX.saturating_sub(info.len() + hash.len() + 1);
    while !base.is_char_boundary(keep.min(base.len())) {
        keep -= 1;
    }
    format!("{}-{hash}{info}", &base[..keep.min(base.len())])
}

/// Files to take now (name, size) and how soon the next settles.
type Waiting = (Vec<(String, u64)>, Option<Duration>);

/// Files waiting in `new/`, oldest name first (Maildir names start with the
/// delivery time), and how soon the next of the others settles. A file last
/// written less than `settle` ago may still be growing (a writer that skips
/// `tmp/`): it is taken once it has been left alone that long.
fn waiting(root: &Path, settle: Duration) -> std::io::Result<Waiting> {
    let now = SystemTime::now();
    let mut files = Vec::new();
    let mut soonest: Option<Duration> = None;
    let entries = match std::fs::read_dir(root.join("new")) {
        Ok(entries) => entries,
        // Not made yet: a mail server makes a Maildir at its first delivery
        // (check-config refuses a path whose folder does not exist).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !root.exists() => {
            return Ok((files, None));
        }
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        // A modification time in the future counts as just written.
        let age = meta
            .modified()
            .ok()
            .map(|m| now.duration_since(m).unwrap_or(Duration::ZERO))
            .unwrap_or(settle);
        if age < settle {
            let left = settle - age;
            soonest = Some(soonest.map_or(left, |s| s.min(left)));
            continue;
        }
        files.push((name, meta.len()));
    }
    files.sort();
    Ok((files, soonest))
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
    // Files taken in but not movable to cur/: left alone from then on (a
    // restart takes them once more, as duplicates).
    let mut unmovable = std::collections::HashSet::new();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match scan_once(runtime, job, fence, root, &mut unmovable, &stop).await {
            // Stopped in the middle of the scan: what is left waits in new/.
            Ok(_) if *stop.borrow() => return Ok(()),
            Ok(settling) => {
                backoff.reset();
                runtime
                    .store
                    .set_mailbox_status(id, "polling", false, 0)
                    .await?;
                // A file still settling is looked at again as soon as it settles.
                let mut pause = Duration::from_millis(runtime.settings.maildir_scan_ms);
                if let Some(left) = settling {
                    pause = pause.min(left + Duration::from_millis(10));
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
    unmovable: &mut std::collections::HashSet<String>,
    stop: &watch::Receiver<bool>,
) -> Result<Option<Duration>, SyncError> {
    let id = &job.spec.id;
    let store = &runtime.store;
    let settle = Duration::from_millis(runtime.settings.maildir_settle_ms);
    let (mut files, settling) = waiting(root, settle)?;
    files.retain(|(name, _)| !unmovable.contains(name));
    if files.is_empty() {
        return Ok(settling);
    }
    store
        .set_mailbox_status(id, "syncing", false, files.len() as i64)
        .await?;
    let memo = super::prepare::CustomerMemo::default();
    // Batches bounded by count and bytes, as for IMAP.
    let sizes: HashMap<u32, u64> = files
        .iter()
        .enumerate()
        .map(|(i, (_, size))| (i as u32, *size))
        .collect();
    let indexes: Vec<u32> = (0..files.len() as u32).collect();
    let mut chunks = Vec::new();
    for counted in indexes.chunks(runtime.settings.batch_size.max(1)) {
        for group in super::job::byte_bounded_groups(counted, &sizes, runtime.settings.batch_bytes)
        {
            chunks.push(
                group
                    .iter()
                    .map(|i| files[*i as usize].clone())
                    .collect::<Vec<_>>(),
            );
        }
    }
    let mut left = files.len();
    for chunk in &chunks {
        // Stopping (shutdown, or the mailbox taken over): after the batch
        // that committed last; the rest stays in new/ for the next owner.
        if *stop.borrow() {
            return Ok(None);
        }
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
                if raw.len() as u64 != *size {
                    // Written to since it was listed: left for a later scan.
                    continue;
                }
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
        let mut batch = IngestBatch {
            mailbox_id: id.clone(),
            service_id: job.spec.service_id.clone(),
            fence: Some(fence.clone()),
            cursor: None,
            items,
            resolves_quarantine: None,
        };
        // The raw sources first, outside the batch's transaction (SQLite's
        // sources file, PostgreSQL's `message_sources`).
        let started = std::time::Instant::now();
        if let Err(e) = store.stage_sources(&mut batch).await {
            // Not lost: the sources then go with their batch.
            tracing::warn!(mailbox = %id, error = %e, "cannot write raw sources ahead of their batch");
        }
        runtime.spent("sources", started);
        let started = std::time::Instant::now();
        let report = store.commit_batch_resilient(&batch).await?;
        runtime.spent("commit", started);
        runtime.committed(job, &report, None);
        left = left.saturating_sub(chunk.len());
        // Only after the commit. A file that cannot be moved stays in new/,
        // left alone from now on: the mailbox goes on with the rest, and
        // the error names the file.
        for name in done {
            let from = root.join("new").join(&name);
            let to = root.join("cur").join(seen_name(&name));
            if let Err(e) = tokio::fs::rename(&from, &to).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                let shown: String = name.chars().take(80).collect();
                let error = format!("cannot move new/{shown} to cur/: {e}");
                tracing::warn!(mailbox = %id, file = %shown, error = %e, "cannot move a taken mail to cur/");
                store.record_mailbox_error(id, &error).await?;
                unmovable.insert(name);
            }
        }
        // What is left of the scan, as the backlog (best effort: the batch
        // is committed and its files moved whatever this says).
        let _ = store
            .set_mailbox_status(id, "syncing", false, left as i64)
            .await;
    }
    Ok(settling)
}

#[cfg(test)]
mod tests {
    use super::{Duration, ensure_layout, seen_name, waiting};
    use std::io::Write;

    #[test]
    fn a_file_is_taken_once_left_alone_for_the_settle_time() {
        let dir = tempfile::tempdir().unwrap();
        ensure_layout(dir.path()).unwrap();
        let path = dir.path().join("new").join("1.a.host");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"Subject: half").unwrap();
        let settle = Duration::from_secs(60);
        let (files, settling) = waiting(dir.path(), settle).unwrap();
        assert!(files.is_empty(), "just written");
        assert!(settling.is_some_and(|left| left <= settle && left > Duration::from_secs(50)));
        // Last written two minutes ago: it has settled.
        file.set_modified(std::time::SystemTime::now() - Duration::from_secs(120))
            .unwrap();
        let (files, settling) = waiting(dir.path(), settle).unwrap();
        assert_eq!(files, vec![("1.a.host".to_string(), 13)]);
        assert_eq!(settling, None);
    }

    #[test]
    fn seen_flag_is_added_once() {
        // A name that would grow past 255 bytes keeps its start and a hash.
        let long = "y".repeat(254);
        let seen = seen_name(&long);
        assert!(
            seen.len() <= 255 && seen.ends_with(":2,S") && seen.starts_with("yyyy"),
            "{seen}"
        );
        assert_ne!(
            seen_name(&"y".repeat(253)),
            seen,
            "distinct names stay distinct"
        );
        let wide = "é".repeat(127);
        assert!(seen_name(&wide).len() <= 255);
        assert_eq!(seen_name("123.abc.host"), "123.abc.host:2,S");
        assert_eq!(seen_name("123.abc.host:2,F"), "123.abc.host:2,FS");
        assert_eq!(seen_name("123.abc.host:2,S"), "123.abc.host:2,S");
    }
}
