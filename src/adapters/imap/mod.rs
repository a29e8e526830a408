//! IMAP: an account as configured ([`ImapAccount`]) and one authenticated
//! session on it ([`ImapSession`]). Mailbox ingestion reads folders through
//! it; the outbox appends Sent copies and searches them.
mod session;
pub use session::*;

use crate::adapters::oauth_token;
use crate::config::{MailboxConfig, Secret, TlsMode};
use std::path::PathBuf;
use std::time::Duration;

/// Where and how to log in to an IMAP account; credentials that change (an
/// XOAUTH2 token from a command or a file) are fetched at each connection.
#[derive(Debug, Clone)]
pub struct ImapAccount {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: String,
    pub password: Option<Secret>,
    pub xoauth2: bool,
    pub token_command: Option<String>,
    /// With XOAUTH2 and `password_file`: the file is read again at every
    /// connection, so a token refreshed by another process is picked up.
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

impl ImapAccount {
    /// The account of an IMAP mailbox of the configuration.
    pub fn from_config(m: &MailboxConfig) -> ImapAccount {
        ImapAccount {
            host: m.host.clone().unwrap_or_default(),
            port: m.port.unwrap_or(match m.tls {
                TlsMode::Implicit => 993,
                _ => 143,
            }),
            tls: m.tls,
            username: m.username.clone().unwrap_or_default(),
            password: m.resolved_password.clone(),
            xoauth2: m.xoauth2 || m.token_command.is_some(),
            token_command: m.token_command.clone(),
            token_file: m.password_file.clone().filter(|_| m.xoauth2),
            ca_file: m.ca_file.clone(),
        }
    }

    /// Connection settings, with a fresh token where one is fetched by command
    /// or read from a file.
    pub async fn settings(&self, timeout: Duration) -> Result<ImapSettings, ImapError> {
        let token_error = |e: oauth_token::TokenError| ImapError::Token(e.to_string());
        let auth = match (&self.token_command, &self.token_file, &self.password) {
            (Some(cmd), _, _) => ImapAuth::XOAuth2(
                oauth_token::from_command(cmd, timeout)
                    .await
                    .map_err(token_error)?,
            ),
            (None, Some(path), _) => {
                ImapAuth::XOAuth2(oauth_token::from_file(path).await.map_err(token_error)?)
            }
            (None, None, Some(p)) if self.xoauth2 => ImapAuth::XOAuth2(p.clone()),
            (None, None, Some(p)) => ImapAuth::Password(p.clone()),
            (None, None, None) => {
                return Err(ImapError::Token("no password or token configured".into()));
            }
        };
        Ok(ImapSettings {
            host: self.host.clone(),
            port: self.port,
            tls: self.tls,
            username: self.username.clone(),
            auth,
            ca_file: self.ca_file.clone(),
            timeout,
        })
    }

    /// Logs in; every network step is bounded by `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<ImapSession, ImapError> {
        ImapSession::connect(&self.settings(timeout).await?).await
    }
}
