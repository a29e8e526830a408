//! OAuth access tokens printed by a command (`token_command`): how mailboxes
//! and the SMTP server of Microsoft 365 or Gmail are reached with XOAUTH2.
//! The command runs for every new connection, so short-lived tokens are
//! always fresh.
use crate::config::Secret;
use std::time::Duration;

/// Why no token was had (never contains the token or the command's output).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

/// Longest `token_command` output read (a JWT access token is a few KiB).
const MAX_TOKEN_OUTPUT: u64 = 64 * 1024;

/// Runs `sh -c command` and returns its trimmed output: a fresh OAuth access
/// token. A command still running after `limit` (a login prompt, a token
/// service that does not answer) is an error, and its whole process group
/// is killed, so a hung helper neither stalls the mailbox nor piles up one
/// stray process per retry.
pub async fn from_command(command: &str, limit: Duration) -> Result<Secret, TokenError> {
    use std::process::Stdio;
    use tokio::io::AsyncReadExt as _;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| TokenError(format!("cannot run token_command: {e}")))?;
    // However this call ends (its future dropped by an outer deadline
    // included), nothing the command started outlives it.
    let mut group = GroupKill(child.id());
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let run = async {
        let mut out = Vec::new();
        (&mut stdout)
            .take(MAX_TOKEN_OUTPUT + 1)
            .read_to_end(&mut out)
            .await?;
        if out.len() as u64 > MAX_TOKEN_OUTPUT {
            return Ok(None);
        }
        let status = child.wait().await?;
        Ok::<_, std::io::Error>(Some((status, out)))
    };
    let (status, out) = match tokio::time::timeout(limit, run).await {
        Ok(Ok(Some(done))) => done,
        Ok(Ok(None)) => {
            return Err(TokenError(format!(
                "token_command printed more than {MAX_TOKEN_OUTPUT} bytes; it was stopped"
            )));
        }
        Ok(Err(e)) => {
            return Err(TokenError(format!("cannot run token_command: {e}")));
        }
        Err(_) => {
            return Err(TokenError(format!(
                "token_command did not finish within {}s; it was stopped",
                limit.as_secs()
            )));
        }
    };
    // It finished by itself: its group is gone (or may be another's now).
    group.0 = None;
    if !status.success() {
        return Err(TokenError(format!("token_command exited with {status}")));
    }
    let token = String::from_utf8_lossy(&out).trim().to_string();
    if token.is_empty() {
        return Err(TokenError("token_command printed nothing".into()));
    }
    if !is_token_text(&token) {
        return Err(TokenError(
            "token_command must print only the token (one word, no spaces or other lines)".into(),
        ));
    }
    Ok(Secret::new(token))
}

/// Reads a token from `path` (trimmed), as written by a process that keeps
/// it fresh. Read at every connection, never cached.
pub async fn from_file(path: &std::path::Path) -> Result<Secret, TokenError> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        TokenError(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    let mut text = String::new();
    file.take(MAX_TOKEN_OUTPUT)
        .read_to_string(&mut text)
        .await
        .map_err(|e| {
            TokenError(format!(
                "cannot read the token file {}: {e}",
                path.display()
            ))
        })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    if !is_token_text(token) {
        return Err(TokenError(format!(
            "the token file {} must hold only the token (one word, no spaces or other lines)",
            path.display()
        )));
    }
    Ok(Secret::new(token.to_string()))
}

/// Kills a command's whole process group when dropped, unless disarmed
/// (`.0 = None`) because the command finished. The shell is not reaped
/// before this runs, so its pid still names its group.
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("kill -s KILL -- -{pid} 2>/dev/null"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// An access token is one printable word (OAuth 2 bearer tokens are
/// base64url-like); anything else is a warning or prompt mixed into it.
fn is_token_text(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_one_printable_word() {
        assert!(is_token_text("ya29.a0AfH6SM-bc_d~e+f/g="));
        assert!(!is_token_text("warning: cache stale\nya29.abc"));
        assert!(!is_token_text("two words"));
        assert!(!is_token_text("tab\there"));
    }

    #[tokio::test]
    async fn commands_and_files_give_their_token_or_a_clear_error() {
        let t = from_command("printf 'tok-123\\n'", Duration::from_secs(5)).await;
        assert_eq!(
            t.map(|s| s.expose().to_owned()).ok().as_deref(),
            Some("tok-123")
        );
        let e = from_command("echo one; echo two", Duration::from_secs(5)).await;
        assert!(e.is_err_and(|e| e.0.contains("only the token")));
        let e = from_command("exit 3", Duration::from_secs(5)).await;
        assert!(e.is_err_and(|e| e.0.contains("exited")));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "file-token\n").expect("write");
        let t = from_file(&path).await;
        assert_eq!(
            t.map(|s| s.expose().to_owned()).ok().as_deref(),
            Some("file-token")
        );
        let e = from_file(&dir.path().join("missing")).await;
        assert!(e.is_err_and(|e| e.0.contains("cannot read the token file")));
        let e = from_command(
            "head -c 100000 /dev/zero | tr '\\0' a",
            Duration::from_secs(5),
        )
        .await;
        assert!(e.is_err_and(|e| e.0.contains("more than")));
    }

    /// Dropped midway (an outer deadline), the command leaves nothing behind.
    #[tokio::test]
    async fn a_dropped_call_kills_what_the_command_started() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pidfile = dir.path().join("pid");
        let command = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let call = from_command(&command, Duration::from_secs(60));
        assert!(
            tokio::time::timeout(Duration::from_millis(500), call)
                .await
                .is_err()
        );
        let pid = std::fs::read_to_string(&pidfile).expect("the command started");
        let alive = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
        };
        let start = std::time::Instant::now();
        while alive(&pid) && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!alive(&pid), "the command's child {pid} outlived the call");
    }
}
