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
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let run = async {
        let mut out = Vec::new();
        (&mut stdout)
            .take(MAX_TOKEN_OUTPUT)
            .read_to_end(&mut out)
            .await?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out))
    };
    let (status, out) = match tokio::time::timeout(limit, run).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            return Err(TokenError(format!("cannot run token_command: {e}")));
        }
        Err(_) => {
            // The shell is not reaped yet, so its pid still names its group.
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("kill -s KILL -- -{pid}"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
            }
            let _ = child.kill().await;
            return Err(TokenError(format!(
                "token_command did not finish within {}s; it was stopped",
                limit.as_secs()
            )));
        }
    };
    if !status.success() {
        return Err(TokenError(format!("token_command exited with {status}")));
    }
    let token = String::from_utf8_lossy(&out).trim().to_string();
    if token.is_empty() {
        return Err(TokenError("token_command printed nothing".into()));
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
    Ok(Secret::new(token.to_string()))
}
