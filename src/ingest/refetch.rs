//! A quarantined mail whose source was not kept (it was over the size
//! limit) fetched again from where it still is: its IMAP folder by UID, or
//! its Maildir file (moved to `cur/` when it was set aside), so that an
//! operator who raised the limit can take it in.
use std::path::Path;
use std::time::Duration;

use crate::adapters::imap::ImapAccount;
use crate::config::{MailboxConfig, MailboxKind};
use crate::store::QuarantineEntry;

use super::maildir::seen_name;

/// Why a set-aside mail could not be fetched again.
#[derive(Debug, thiserror::Error)]
pub enum RefetchError {
    #[error("mailbox '{0}' is not in this server's configuration")]
    NoMailbox(String),
    #[error("the entry does not say where the mail is")]
    NoPlace,
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Unreachable(String),
}

/// The raw source of `entry`, read again from `mailbox`: by UID from an
/// IMAP folder whose UIDVALIDITY is still the one recorded, or from a
/// Maildir file that is still the size recorded. A UID or a file name
/// that may now name another mail is refused.
pub async fn refetch(
    mailbox: Option<&MailboxConfig>,
    entry: &QuarantineEntry,
    timeout: Duration,
) -> Result<Vec<u8>, RefetchError> {
    let mailbox = mailbox.ok_or_else(|| RefetchError::NoMailbox(entry.mailbox_id.clone()))?;
    let place = entry.source_ref.as_deref().ok_or(RefetchError::NoPlace)?;
    match mailbox.kind {
        MailboxKind::Imap => {
            let (folder, uid) = place
                .rsplit_once(':')
                .and_then(|(f, u)| Some((f, u.parse::<u32>().ok()?)))
                .ok_or(RefetchError::NoPlace)?;
            let validity = entry.uid_validity.ok_or(RefetchError::NoPlace)?;
            from_imap(mailbox, folder, uid, validity, timeout).await
        }
        MailboxKind::Maildir => {
            let root = mailbox.path.as_deref().ok_or(RefetchError::NoPlace)?;
            let raw = from_maildir(root, place).await?;
            // A file of that name holding another mail now is refused.
            if raw.len() as i64 != entry.size {
                return Err(RefetchError::Gone(format!(
                    "the file found is {} bytes, not the {} recorded: it is another mail now",
                    raw.len(),
                    entry.size
                )));
            }
            Ok(raw)
        }
    }
}

/// The mail of `uid` in `folder`, while the folder's UIDVALIDITY is still
/// `validity` (the one it had when the mail was set aside): once the
/// folder was rebuilt the UID may name another mail, and nothing is taken.
async fn from_imap(
    mailbox: &MailboxConfig,
    folder: &str,
    uid: u32,
    validity: i64,
    timeout: Duration,
) -> Result<Vec<u8>, RefetchError> {
    let unreachable =
        |e: crate::adapters::imap::ImapError| RefetchError::Unreachable(e.to_string());
    let mut session = ImapAccount::from_config(mailbox)
        .connect(timeout)
        .await
        .map_err(unreachable)?;
    let fetched = async {
        let status = session.select(folder).await?;
        if i64::from(status.uid_validity) != validity {
            return Ok(Err(RefetchError::Gone(format!(
                "folder {folder} was rebuilt since (UIDVALIDITY {validity} then, {} now): UID {uid} may name another mail",
                status.uid_validity
            ))));
        }
        session.fetch(&[uid]).await.map(Ok)
    }
    .await;
    session.logout().await;
    fetched
        .map_err(unreachable)??
        .into_iter()
        .find(|m| m.uid == uid)
        .map(|m| m.raw)
        .ok_or_else(|| RefetchError::Gone(format!("folder {folder} no longer holds UID {uid}")))
}

async fn from_maildir(root: &Path, name: &str) -> Result<Vec<u8>, RefetchError> {
    if name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(RefetchError::NoPlace);
    }
    // Set aside into `cur/` with the seen flag; still in `new/` if the
    // move did not happen.
    for path in [
        root.join("cur").join(seen_name(name)),
        root.join("new").join(name),
    ] {
        match tokio::fs::read(&path).await {
            Ok(raw) => return Ok(raw),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(RefetchError::Unreachable(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Err(RefetchError::Gone(format!(
        "the file {name} is no longer in the Maildir's cur/ or new/"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_maildir_file_is_read_where_it_was_set_aside_and_nowhere_else() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["new", "cur"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("cur").join(seen_name("1.a.host")), b"moved").unwrap();
        std::fs::write(dir.path().join("new").join("2.a.host"), b"still new").unwrap();
        std::fs::write(dir.path().join("secret"), b"not mail").unwrap();
        assert_eq!(
            from_maildir(dir.path(), "1.a.host").await.unwrap(),
            b"moved"
        );
        assert_eq!(
            from_maildir(dir.path(), "2.a.host").await.unwrap(),
            b"still new"
        );
        assert!(matches!(
            from_maildir(dir.path(), "3.a.host").await,
            Err(RefetchError::Gone(_))
        ));
        for name in ["../secret", "cur/../../secret", ".hidden", "a\\b"] {
            assert!(
                matches!(
                    from_maildir(dir.path(), name).await,
                    Err(RefetchError::NoPlace)
                ),
                "{name}"
            );
        }
    }
}
