//! One authenticated IMAP connection to one account, with the few commands
//! ingestion and the outbox need.
//!
//! Guarantees the worker builds on (ARCHITECTURE.md, guarantees 1 and 2):
//! - no call hangs: every network step runs under [`ImapSettings::timeout`]
//!   (an inactivity timeout under the stream plus a limit per command), and
//!   [`ImapSession::idle`] under `max_wait` plus that timeout;
//! - a failed command that may have left the connection in an unknown state
//!   (timeout, I/O error, server `BYE`) poisons the session: every later call
//!   returns [`ImapError::Closed`] and the worker reconnects. A plain `NO`/`BAD`
//!   leaves the session usable;
//! - a command's failure is never mistaken for an empty answer: the tagged
//!   status of every command is checked (async-imap's own `search`, `fetch`,
//!   `noop` do not, and treat a closed connection as "nothing found");
//! - fetching never sets `\Seen` (`BODY.PEEK[]`), marking and moving are
//!   idempotent, so the worker may repeat them after a crash;
//! - `EXISTS`/`RECENT` seen in any response are remembered, so the next
//!   [`ImapSession::idle`] returns [`IdleOutcome::NewData`] at once instead
//!   of sleeping on mail that already arrived;
//! - errors and logs never contain the password, the token or message bodies.
use crate::config::{Secret, TlsMode};
use async_imap::extensions::idle::{Handle as IdleHandle, IdleResponse};
use async_imap::imap_proto::{
    AttributeValue, Capability, MailboxDatum, RequestId, Response, ResponseCode, Status,
};
use base64::Engine as _;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tracing::{debug, info, warn};

/// Longest single IDLE: servers may drop an IDLE after 30 minutes (RFC 2177
/// says re-issue at least every 29), so a longer `max_wait` is cut to this.
pub const MAX_IDLE: Duration = Duration::from_secs(25 * 60);

/// Longest UID set put in one command; longer lists are split, so a command
/// line stays far below servers' limits (Dovecot: 64 KiB).
const MAX_UID_SET_LEN: usize = 2000;

/// Longest server text quoted in an error or a log line.
const MAX_ERROR_TEXT: usize = 300;

/// Where and how to log in.
#[derive(Debug, Clone)]
pub struct ImapSettings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: String,
    pub auth: ImapAuth,
    /// PEM file of extra trusted certificates (added to the webpki roots),
    /// e.g. a private CA or a self-signed server certificate.
    pub ca_file: Option<PathBuf>,
    /// Limit of each network step: connecting, TLS, each command, and
    /// silence from the server while a command runs.
    pub timeout: Duration,
}

/// How to authenticate.
#[derive(Debug, Clone)]
pub enum ImapAuth {
    /// `LOGIN` with a password.
    Password(Secret),
    /// `AUTHENTICATE XOAUTH2` with the secret as the OAuth access token.
    XOAuth2(Secret),
}

/// What went wrong. Messages never contain the password or the token.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("could not connect to the IMAP server: {0}")]
    Connect(String),
    #[error("TLS with the IMAP server failed: {0}")]
    Tls(String),
    #[error("IMAP login refused (check the user name and password or token): {0}")]
    Auth(String),
    #[error("the IMAP server did not answer in time ({0})")]
    Timeout(&'static str),
    #[error("IMAP folder {0:?} does not exist")]
    NoSuchFolder(String),
    #[error("IMAP protocol error: {0}")]
    Protocol(String),
    #[error("the IMAP connection is closed; reconnect")]
    Closed,
    #[error("cannot get an XOAUTH2 token: {0}")]
    Token(String),
}

impl ImapError {
    /// Whether the credentials were refused (retrying will not help until
    /// they change).
    pub fn is_auth(&self) -> bool {
        matches!(self, ImapError::Auth(_))
    }
}

/// A folder as `SELECT` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolderStatus {
    pub uid_validity: u32,
    pub uid_next: Option<u32>,
    pub exists: u32,
}

/// One message, exactly as the server stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchedMessage {
    pub uid: u32,
    pub raw: Vec<u8>,
}

impl fmt::Debug for FetchedMessage {
    // Never print bodies (they end up in logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedMessage")
            .field("uid", &self.uid)
            .field("bytes", &self.raw.len())
            .finish()
    }
}

/// Why [`ImapSession::idle`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleOutcome {
    /// The folder changed (new, expunged or re-flagged messages): look.
    NewData,
    /// `max_wait` passed without a change.
    Timeout,
    /// The shutdown signal became true.
    Shutdown,
}

/// One authenticated IMAP connection. Not `Clone`; one per mailbox worker.
pub struct ImapSession {
    /// `None` once the connection is lost or in an unknown state.
    session: Option<async_imap::Session<MailStream>>,
    host: String,
    timeout: Duration,
    capabilities: HashSet<String>,
    selected: Option<String>,
    /// Folders created or found in this session (no CREATE before each move).
    known_folders: HashSet<String>,
    /// Message counts of the selected folder, as last announced.
    counts: MailboxCounts,
    /// New messages announced (EXISTS/RECENT grew) since the last `idle()`.
    new_data: bool,
    /// Test hook: behave as if the server lacked MOVE.
    no_move: bool,
}

impl fmt::Debug for ImapSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapSession")
            .field("host", &self.host)
            .field("open", &self.session.is_some())
            .field("selected", &self.selected)
            .field("capabilities", &self.capabilities)
            .finish()
    }
}

/// A command refused by the server (`NO`/`BAD`), or a failure that ended the
/// session.
enum CmdError {
    Rejected(Rejection),
    Failed(ImapError),
}

struct Rejection {
    bad: bool,
    try_create: bool,
    /// The server's text, with unknown response codes such as
    /// `[NONEXISTENT]` left in it.
    text: String,
}

impl Rejection {
    fn into_error(self, what: &str) -> ImapError {
        let kind = if self.bad { "BAD" } else { "NO" };
        ImapError::Protocol(format!("{what}: server said {kind} {}", self.text))
    }
}

impl CmdError {
    fn into_error(self, what: &str) -> ImapError {
        match self {
            CmdError::Rejected(r) => r.into_error(what),
            CmdError::Failed(e) => e,
        }
    }
}

impl ImapSession {
    /// Connects (TCP, then TLS as configured), reads the greeting, logs in
    /// and asks for the capabilities; each step under `settings.timeout`.
    pub async fn connect(settings: &ImapSettings) -> Result<ImapSession, ImapError> {
        let limit = settings.timeout;
        let host = settings.host.as_str();
        let port = settings.port;
        debug!(host, port, tls = ?settings.tls, user = %settings.username, "IMAP: connecting");

        let tcp = within(limit, "connect", TcpStream::connect((host, port)))
            .await?
            .map_err(|e| ImapError::Connect(format!("{host}:{port}: {e}")))?;
        // Commands are small writes answered by the server: no Nagle delay.
        let _ = tcp.set_nodelay(true);

        let client = match settings.tls {
            TlsMode::None => {
                let mut client =
                    async_imap::Client::new(MailStream::new(Transport::Plain(tcp), limit));
                read_greeting(&mut client, limit).await?;
                client
            }
            TlsMode::Implicit => {
                let tls = within(limit, "TLS handshake", tls_handshake(settings, tcp)).await??;
                let mut client = async_imap::Client::new(MailStream::new(tls, limit));
                read_greeting(&mut client, limit).await?;
                client
            }
            TlsMode::Starttls => {
                let mut client =
                    async_imap::Client::new(MailStream::new(Transport::Plain(tcp), limit));
                read_greeting(&mut client, limit).await?;
                within(
                    limit,
                    "STARTTLS",
                    client.run_command_and_check_ok("STARTTLS", None),
                )
                .await?
                .map_err(|e| match e {
                    async_imap::error::Error::No(s) | async_imap::error::Error::Bad(s) => {
                        ImapError::Tls(format!("{host} refused STARTTLS: {}", outcome_text(&s)))
                    }
                    other => from_imap(other, "STARTTLS"),
                })?;
                // Whatever the server sent after its OK is dropped with the
                // plain stream (no response injection before TLS).
                let Transport::Plain(tcp) = client.into_inner().into_transport() else {
                    return Err(ImapError::Tls("STARTTLS on a TLS stream".into()));
                };
                let tls = within(limit, "TLS handshake", tls_handshake(settings, tcp)).await??;
                async_imap::Client::new(MailStream::new(tls, limit))
            }
        };

        let session = match &settings.auth {
            ImapAuth::Password(password) => within(
                limit,
                "login",
                client.login(&settings.username, password.expose()),
            )
            .await?
            .map_err(|(e, _)| auth_error(e, "login"))?,
            ImapAuth::XOAuth2(token) => {
                let mut auth = XOAuth2 {
                    user: &settings.username,
                    token: token.expose(),
                    sent: false,
                    error_status: None,
                };
                let result = within(
                    limit,
                    "authenticate",
                    client.authenticate("XOAUTH2", &mut auth),
                )
                .await?;
                result.map_err(|(e, _)| xoauth2_error(auth_error(e, "authenticate"), &auth))?
            }
        };

        let mut me = ImapSession {
            session: Some(session),
            host: settings.host.clone(),
            timeout: limit,
            capabilities: HashSet::new(),
            selected: None,
            known_folders: HashSet::new(),
            counts: MailboxCounts::default(),
            new_data: false,
            no_move: false,
        };
        me.drain_unsolicited();
        let mut caps = HashSet::new();
        me.exec("capability", "CAPABILITY", Some(limit), |r| {
            if let Response::Capabilities(list) = r {
                caps.extend(list.iter().map(capability_name));
            }
        })
        .await
        .map_err(|e| e.into_error("CAPABILITY"))?;
        me.capabilities = caps;
        info!(
            host,
            port,
            user = %settings.username,
            idle = me.supports_idle(),
            r#move = me.supports_move(),
            uidplus = me.supports_uidplus(),
            "IMAP: logged in"
        );
        Ok(me)
    }

    /// Whether the server announced IDLE (RFC 2177).
    pub fn supports_idle(&self) -> bool {
        self.capabilities.contains("IDLE")
    }

    /// Whether the server announced MOVE (RFC 6851).
    pub fn supports_move(&self) -> bool {
        self.capabilities.contains("MOVE") && !self.no_move
    }

    /// Whether the server announced UIDPLUS (RFC 4315: `UID EXPUNGE`).
    pub fn supports_uidplus(&self) -> bool {
        self.capabilities.contains("UIDPLUS")
    }

    /// Test hook: use the COPY + EXPUNGE fallback even where MOVE exists.
    #[doc(hidden)]
    pub fn disable_move_for_tests(&mut self) {
        self.no_move = true;
    }

    /// Selects `folder` (read-write). [`ImapError::NoSuchFolder`] when the
    /// server says it does not exist; the session stays usable.
    pub async fn select(&mut self, folder: &str) -> Result<FolderStatus, ImapError> {
        let name = mailbox_arg(folder)?;
        // A failed SELECT leaves no folder selected.
        self.selected = None;
        self.counts = MailboxCounts::default();
        let (mut uid_validity, mut uid_next, mut exists, mut recent) = (None, None, 0, 0);
        let res = self
            .exec(
                "select",
                &format!("SELECT {name}"),
                Some(self.timeout),
                |r| match r {
                    Response::MailboxData(MailboxDatum::Exists(n)) => exists = *n,
                    Response::MailboxData(MailboxDatum::Recent(n)) => recent = *n,
                    Response::Data {
                        status: Status::Ok,
                        outcome,
                    } => match outcome.code {
                        Some(ResponseCode::UidValidity(v)) => uid_validity = Some(v),
                        Some(ResponseCode::UidNext(n)) => uid_next = Some(n),
                        _ => {}
                    },
                    _ => {}
                },
            )
            .await;
        match res {
            Ok(()) => {}
            Err(CmdError::Rejected(r)) if !r.bad && says_nonexistent(&r.text) => {
                info!(host = %self.host, folder, "IMAP: folder does not exist");
                return Err(ImapError::NoSuchFolder(folder.to_string()));
            }
            Err(e) => return Err(e.into_error(&format!("SELECT {folder:?}"))),
        }
        let Some(uid_validity) = uid_validity else {
            return Err(ImapError::Protocol(format!(
                "SELECT {folder:?}: the server sent no UIDVALIDITY (UIDs are unusable)"
            )));
        };
        self.selected = Some(folder.to_string());
        self.counts = MailboxCounts { exists, recent };
        debug!(host = %self.host, folder, uid_validity, ?uid_next, exists, "IMAP: selected");
        Ok(FolderStatus {
            uid_validity,
            uid_next,
            exists,
        })
    }

    /// UIDs in the selected folder greater than `after_uid`, ascending.
    pub async fn uids_after(&mut self, after_uid: u32) -> Result<Vec<u32>, ImapError> {
        let Some(first) = after_uid.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut uids = Vec::new();
        self.exec(
            "search",
            &format!("UID SEARCH UID {first}:*"),
            Some(self.timeout),
            |r| {
                if let Response::MailboxData(MailboxDatum::Search(found)) = r {
                    uids.extend_from_slice(found);
                }
            },
        )
        .await
        .map_err(|e| e.into_error("UID SEARCH"))?;
        // `n:*` always includes the last message, even when its UID < n.
        uids.retain(|&u| u > after_uid);
        uids.sort_unstable();
        uids.dedup();
        debug!(host = %self.host, folder = ?self.selected, after_uid, count = uids.len(), "IMAP: searched");
        Ok(uids)
    }

    /// `(uid, RFC822.SIZE)` of those of `uids` that exist, ascending by UID.
    pub async fn message_sizes(&mut self, uids: &[u32]) -> Result<Vec<(u32, u32)>, ImapError> {
        let wanted: HashSet<u32> = uids.iter().copied().collect();
        let mut sizes = Vec::new();
        for set in uid_sets(uids) {
            let res = self
                .exec(
                    "fetch sizes",
                    &format!("UID FETCH {set} (UID RFC822.SIZE)"),
                    Some(self.timeout),
                    |r| {
                        if let Response::Fetch(_, attrs) = r {
                            let (mut uid, mut size) = (None, None);
                            for a in attrs {
                                match a {
                                    AttributeValue::Uid(u) => uid = Some(*u),
                                    AttributeValue::Rfc822Size(s) => size = Some(*s),
                                    _ => {}
                                }
                            }
                            if let (Some(u), Some(s)) = (uid, size)
                                && wanted.contains(&u)
                            {
                                sizes.push((u, s));
                            }
                        }
                    },
                )
                .await;
            partial_ok(res, "UID FETCH RFC822.SIZE", &self.host)?;
        }
        sizes.sort_unstable();
        sizes.dedup_by_key(|(u, _)| *u);
        Ok(sizes)
    }

    /// The exact bytes of those of `uids` that still exist, ascending by UID.
    /// Uses `BODY.PEEK[]`, so `\Seen` is not set. Everything is held in
    /// memory: fetch in batches sized with [`ImapSession::message_sizes`].
    pub async fn fetch(&mut self, uids: &[u32]) -> Result<Vec<FetchedMessage>, ImapError> {
        let wanted: HashSet<u32> = uids.iter().copied().collect();
        let mut messages: Vec<FetchedMessage> = Vec::new();
        for set in uid_sets(uids) {
            // Large bodies take long: bounded by the stream's inactivity
            // timeout, not by one limit for the whole command.
            let res = self
                .exec(
                    "fetch",
                    &format!("UID FETCH {set} (UID BODY.PEEK[])"),
                    None,
                    |r| {
                        if let Response::Fetch(_, attrs) = r {
                            let mut uid = None;
                            let mut body = None;
                            for a in attrs {
                                match a {
                                    AttributeValue::Uid(u) => uid = Some(*u),
                                    AttributeValue::BodySection {
                                        section: None,
                                        index: None,
                                        data,
                                    } => body = Some(data.as_deref()),
                                    AttributeValue::Rfc822(data) => body = Some(data.as_deref()),
                                    _ => {}
                                }
                            }
                            // FETCH responses without a body are flag updates.
                            match (uid, body) {
                                (Some(u), Some(Some(raw))) if wanted.contains(&u) => {
                                    messages.push(FetchedMessage {
                                        uid: u,
                                        raw: raw.to_vec(),
                                    })
                                }
                                (Some(u), Some(None)) => {
                                    warn!(uid = u, "IMAP: server returned NIL for a message body")
                                }
                                _ => {}
                            }
                        }
                    },
                )
                .await;
            partial_ok(res, "UID FETCH BODY.PEEK[]", &self.host)?;
        }
        messages.sort_by_key(|m| m.uid);
        messages.dedup_by_key(|m| m.uid);
        let bytes: usize = messages.iter().map(|m| m.raw.len()).sum();
        debug!(
            host = %self.host,
            folder = ?self.selected,
            asked = wanted.len(),
            got = messages.len(),
            bytes,
            "IMAP: fetched"
        );
        Ok(messages)
    }

    /// Sets `\Seen` on `uids` (absent UIDs are ignored; repeating is harmless).
    pub async fn mark_seen(&mut self, uids: &[u32]) -> Result<(), ImapError> {
        for set in uid_sets(uids) {
            self.exec(
                "store",
                &format!("UID STORE {set} +FLAGS.SILENT (\\Seen)"),
                Some(self.timeout),
                |_| {},
            )
            .await
            .map_err(|e| e.into_error("UID STORE +FLAGS (\\Seen)"))?;
        }
        debug!(host = %self.host, folder = ?self.selected, count = uids.len(), "IMAP: marked seen");
        Ok(())
    }

    /// Moves `uids` from the selected folder to `folder`, creating it first
    /// if missing. `UID MOVE` where supported, else `UID COPY`, `\Deleted`
    /// and `UID EXPUNGE` (or a plain `EXPUNGE` without UIDPLUS, which also
    /// removes other messages already flagged `\Deleted`). UIDs no longer in
    /// the selected folder are ignored, so repeating a move is harmless; with
    /// the fallback, a crash between COPY and EXPUNGE may leave a second copy
    /// in `folder` on retry, never a lost message.
    pub async fn move_to(&mut self, uids: &[u32], folder: &str) -> Result<(), ImapError> {
        let target = mailbox_arg(folder)?;
        if uids.is_empty() {
            return Ok(());
        }
        self.ensure_folder(folder, &target).await?;
        for set in uid_sets(uids) {
            if self.supports_move() {
                self.copy_or_move("UID MOVE", &set, folder, &target).await?;
            } else {
                self.copy_or_move("UID COPY", &set, folder, &target).await?;
                self.exec(
                    "store",
                    &format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"),
                    Some(self.timeout),
                    |_| {},
                )
                .await
                .map_err(|e| e.into_error("UID STORE +FLAGS (\\Deleted)"))?;
                let expunge = if self.supports_uidplus() {
                    format!("UID EXPUNGE {set}")
                } else {
                    "EXPUNGE".to_string()
                };
                self.exec("expunge", &expunge, Some(self.timeout), |_| {})
                    .await
                    .map_err(|e| e.into_error("EXPUNGE"))?;
            }
        }
        info!(
            host = %self.host,
            from = ?self.selected,
            to = folder,
            count = uids.len(),
            r#move = self.supports_move(),
            "IMAP: moved messages"
        );
        Ok(())
    }

    /// Waits for a change in the selected folder: returns on new data, when
    /// `max_wait` (at most [`MAX_IDLE`]) has passed, or when `shutdown`
    /// becomes true; IDLE is always ended with DONE so the session stays
    /// usable. Returns [`IdleOutcome::NewData`] at once if EXISTS/RECENT
    /// arrived with an earlier command. Keep-alives (`* OK Still here`) are
    /// not data. Without IDLE, it sleeps and then polls with NOOP.
    pub async fn idle(
        &mut self,
        max_wait: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<IdleOutcome, ImapError> {
        if *shutdown.borrow_and_update() {
            return Ok(IdleOutcome::Shutdown);
        }
        if self.session.is_none() {
            return Err(ImapError::Closed);
        }
        self.drain_unsolicited();
        if std::mem::take(&mut self.new_data) {
            debug!(host = %self.host, folder = ?self.selected, "IMAP: new data arrived before IDLE");
            return Ok(IdleOutcome::NewData);
        }
        let max_wait = max_wait.min(MAX_IDLE);
        if !self.supports_idle() {
            return self.poll_wait(max_wait, shutdown).await;
        }

        let Some(session) = self.session.take() else {
            return Err(ImapError::Closed);
        };
        let limit = self.timeout;
        let counts = &mut self.counts;
        // Outer bound in case the server never answers IDLE or DONE.
        let outer = max_wait + limit * 3;
        let result = match tokio::time::timeout(
            outer,
            idle_once(session, max_wait, limit, shutdown, counts),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ImapError::Timeout("idle")),
        };
        match result {
            Ok((session, outcome)) => {
                self.session = Some(session);
                // Data that arrived between our DONE and the server's OK.
                self.drain_unsolicited();
                if outcome == IdleOutcome::NewData {
                    // The caller looks now; no second wake-up for the same.
                    self.new_data = false;
                }
                debug!(host = %self.host, folder = ?self.selected, ?outcome, "IMAP: idle ended");
                Ok(outcome)
            }
            Err(e) => {
                warn!(host = %self.host, folder = ?self.selected, error = %e, "IMAP: idle failed");
                Err(e)
            }
        }
    }

    /// `NOOP`: keeps the connection alive and collects pending updates.
    /// Stores `raw` in `folder` (created if missing) with `flags`, e.g. a
    /// Sent copy with `\\Seen`.
    pub async fn append(&mut self, folder: &str, flags: &str, raw: &[u8]) -> Result<(), ImapError> {
        let target = mailbox_arg(folder)?;
        self.ensure_folder(folder, &target).await?;
        let Some(session) = self.session.as_mut() else {
            return Err(ImapError::Closed);
        };
        session.get_mut().set_io_timeout(self.timeout);
        let flags = (!flags.is_empty()).then_some(flags);
        // async-imap quotes the name itself: give it the encoded, unquoted one.
        let encoded = utf7_imap(folder);
        let res = tokio::time::timeout(
            self.timeout.saturating_mul(4),
            session.append(&encoded, flags, None, raw),
        )
        .await;
        match res {
            Ok(Ok(())) => {
                debug!(host = %self.host, folder, size = raw.len(), "IMAP: appended");
                Ok(())
            }
            Ok(Err(e)) => {
                let e = from_imap(e, "append");
                if !matches!(e, ImapError::Protocol(_) | ImapError::NoSuchFolder(_)) {
                    self.session = None;
                }
                Err(e)
            }
            Err(_) => {
                self.session = None;
                Err(ImapError::Timeout("append"))
            }
        }
    }

    /// Whether `folder` holds a message with this Message-ID (without `<>`):
    /// how the outbox finds out, after a crash, that a reply already went out.
    pub async fn contains_message_id(
        &mut self,
        folder: &str,
        message_id: &str,
    ) -> Result<bool, ImapError> {
        if message_id.contains(['"', '\\', '\r', '\n']) {
            return Ok(false);
        }
        match self.select(folder).await {
            Ok(_) => {}
            Err(ImapError::NoSuchFolder(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        let mut found = false;
        self.exec(
            "search",
            &format!("UID SEARCH HEADER Message-ID \"<{message_id}>\""),
            Some(self.timeout),
            |r| {
                if let Response::MailboxData(MailboxDatum::Search(ids)) = r {
                    found |= !ids.is_empty();
                }
            },
        )
        .await
        .map_err(|e| e.into_error("UID SEARCH HEADER Message-ID"))?;
        Ok(found)
    }

    pub async fn noop(&mut self) -> Result<(), ImapError> {
        self.exec("noop", "NOOP", Some(self.timeout), |_| {})
            .await
            .map_err(|e| e.into_error("NOOP"))
    }

    /// `LOGOUT`, best effort, and closes the connection.
    pub async fn logout(mut self) {
        let _ = self
            .exec("logout", "LOGOUT", Some(self.timeout), |_| {})
            .await;
        if let Some(mut session) = self.session.take() {
            let _ = tokio::time::timeout(self.timeout, session.get_mut().shutdown()).await;
        }
        debug!(host = %self.host, "IMAP: logged out");
    }

    // ------------------------------------------------------------------------

    /// Runs one tagged command, handing every untagged response to
    /// `on_untagged`, and checks its tagged status. EXISTS/RECENT that grow
    /// (outside SELECT) are remembered as new data. Any failure other than
    /// NO/BAD drops the connection.
    async fn exec(
        &mut self,
        step: &'static str,
        command: &str,
        limit: Option<Duration>,
        mut on_untagged: impl FnMut(&Response<'_>),
    ) -> Result<(), CmdError> {
        let Some(session) = self.session.as_mut() else {
            return Err(CmdError::Failed(ImapError::Closed));
        };
        session.get_mut().set_io_timeout(self.timeout);
        let count_new_data = step != "select";
        let mut new_data = false;
        let mut counts = self.counts;
        let host = self.host.as_str();
        let run = async {
            let id: RequestId = session
                .run_command(command)
                .await
                .map_err(|e| CmdError::Failed(from_imap(e, step)))?;
            loop {
                let resp = match session.read_response().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(CmdError::Failed(ImapError::Closed)),
                    Err(e) => return Err(CmdError::Failed(from_io(&e, step))),
                };
                match resp.parsed() {
                    Response::Done {
                        tag,
                        status,
                        outcome,
                    } if *tag == id => {
                        let text = clip(outcome.information.as_deref().unwrap_or(""));
                        return match status {
                            Status::Ok => Ok(()),
                            Status::No | Status::Bad => Err(CmdError::Rejected(Rejection {
                                bad: *status == Status::Bad,
                                try_create: matches!(outcome.code, Some(ResponseCode::TryCreate)),
                                text,
                            })),
                            other => Err(CmdError::Failed(ImapError::Protocol(format!(
                                "{step}: unexpected status {other:?} {text}"
                            )))),
                        };
                    }
                    Response::Done { tag, .. } => {
                        debug!(host, step, tag = ?tag, "IMAP: completion for an unknown tag ignored");
                    }
                    Response::Data {
                        status: Status::Bye,
                        outcome,
                    } => {
                        let text = clip(outcome.information.as_deref().unwrap_or(""));
                        if step != "logout" {
                            info!(host, step, text, "IMAP: server said BYE");
                        }
                        return Err(CmdError::Failed(ImapError::Closed));
                    }
                    r => {
                        new_data |= counts.observe(r) && count_new_data;
                        on_untagged(r);
                    }
                }
            }
        };
        let res = match limit {
            Some(l) => match tokio::time::timeout(l, run).await {
                Ok(r) => r,
                Err(_) => Err(CmdError::Failed(ImapError::Timeout(step))),
            },
            None => run.await,
        };
        self.new_data |= new_data;
        self.counts = counts;
        if let Err(CmdError::Failed(e)) = &res {
            if step != "logout" {
                warn!(host = %self.host, folder = ?self.selected, step, error = %e, "IMAP: connection dropped");
            }
            self.session = None;
        }
        res
    }

    /// Follows EXISTS/RECENT/EXPUNGE that async-imap's own routines
    /// (login, IDLE, DONE) queued on the session's unsolicited channel.
    fn drain_unsolicited(&mut self) {
        if let Some(session) = self.session.as_ref() {
            while let Ok(u) = session.unsolicited_responses.try_recv() {
                self.new_data |= self.counts.observe_unsolicited(&u);
            }
        }
    }

    /// CREATE (+ SUBSCRIBE) once per session; "already exists" is fine.
    async fn ensure_folder(&mut self, folder: &str, target: &str) -> Result<(), ImapError> {
        if self.known_folders.contains(folder) {
            return Ok(());
        }
        match self
            .exec(
                "create",
                &format!("CREATE {target}"),
                Some(self.timeout),
                |_| {},
            )
            .await
        {
            Ok(()) => {
                info!(host = %self.host, folder, "IMAP: created folder");
                // So people see it in their mail clients; not essential.
                let _ = self
                    .exec(
                        "subscribe",
                        &format!("SUBSCRIBE {target}"),
                        Some(self.timeout),
                        |_| {},
                    )
                    .await;
                if self.session.is_none() {
                    return Err(ImapError::Closed);
                }
            }
            // Usually [ALREADYEXISTS]; anything else shows up in the move.
            Err(CmdError::Rejected(r)) => {
                debug!(host = %self.host, folder, text = %r.text, "IMAP: CREATE refused (exists?)");
            }
            Err(CmdError::Failed(e)) => return Err(e),
        }
        self.known_folders.insert(folder.to_string());
        Ok(())
    }

    /// `UID MOVE`/`UID COPY` to `target`; creates it and retries once when
    /// the server answers `[TRYCREATE]` (deleted since `ensure_folder`).
    async fn copy_or_move(
        &mut self,
        verb: &str,
        set: &str,
        folder: &str,
        target: &str,
    ) -> Result<(), ImapError> {
        let command = format!("{verb} {set} {target}");
        match self
            .exec("move", &command, Some(self.timeout), |_| {})
            .await
        {
            Ok(()) => Ok(()),
            Err(CmdError::Rejected(r)) if r.try_create => {
                self.known_folders.remove(folder);
                self.ensure_folder(folder, target).await?;
                self.exec("move", &command, Some(self.timeout), |_| {})
                    .await
                    .map_err(|e| e.into_error(&format!("{verb} to {folder:?}")))
            }
            Err(e) => Err(e.into_error(&format!("{verb} to {folder:?}"))),
        }
    }

    /// Fallback for servers without IDLE: sleep, then ask with NOOP.
    async fn poll_wait(
        &mut self,
        max_wait: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<IdleOutcome, ImapError> {
        let deadline = Instant::now() + max_wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow_and_update() {
                        return Ok(IdleOutcome::Shutdown);
                    }
                }
            }
        }
        self.noop().await?;
        Ok(if std::mem::take(&mut self.new_data) {
            IdleOutcome::NewData
        } else {
            IdleOutcome::Timeout
        })
    }
}

/// Message counts of the selected folder, to tell new mail from the echo of
/// our own changes (after an EXPUNGE, Dovecot re-announces a smaller RECENT).
#[derive(Debug, Clone, Copy, Default)]
struct MailboxCounts {
    exists: u32,
    recent: u32,
}

impl MailboxCounts {
    /// Follows one untagged response; true if it announces new messages.
    fn observe(&mut self, r: &Response<'_>) -> bool {
        match r {
            Response::MailboxData(MailboxDatum::Exists(n)) => self.exists_now(*n),
            Response::MailboxData(MailboxDatum::Recent(n)) => self.recent_now(*n),
            Response::Expunge(_) => self.expunged(),
            _ => false,
        }
    }

    /// The same for what async-imap queued on its unsolicited channel.
    fn observe_unsolicited(&mut self, u: &async_imap::types::UnsolicitedResponse) -> bool {
        use async_imap::types::UnsolicitedResponse as U;
        match u {
            U::Exists(n) => self.exists_now(*n),
            U::Recent(n) => self.recent_now(*n),
            U::Expunge(_) => self.expunged(),
            _ => false,
        }
    }

    fn exists_now(&mut self, n: u32) -> bool {
        let grew = n > self.exists;
        self.exists = n;
        grew
    }

    fn recent_now(&mut self, n: u32) -> bool {
        let grew = n > self.recent;
        self.recent = n;
        grew
    }

    fn expunged(&mut self) -> bool {
        self.exists = self.exists.saturating_sub(1);
        false
    }
}

/// What ended one wait inside IDLE.
enum IdleEvent {
    Server(async_imap::error::Result<IdleResponse>),
    Deadline,
    Shutdown,
}

/// One IDLE round trip on a session taken out of [`ImapSession`]: IDLE,
/// wait, DONE. Returns the session only if the connection is still in a
/// known state.
async fn idle_once(
    session: async_imap::Session<MailStream>,
    max_wait: Duration,
    limit: Duration,
    shutdown: &mut watch::Receiver<bool>,
    counts: &mut MailboxCounts,
) -> Result<(async_imap::Session<MailStream>, IdleOutcome), ImapError> {
    // `init` queues what arrives before the server's "+ idling" there.
    let before_idling = session.unsolicited_responses.clone();
    let mut handle: IdleHandle<MailStream> = session.idle();
    handle.as_mut().set_io_timeout(limit);
    within(limit, "IDLE", handle.init())
        .await?
        .map_err(|e| from_imap(e, "IDLE"))?;
    let mut arrived = false;
    while let Ok(u) = before_idling.try_recv() {
        arrived |= counts.observe_unsolicited(&u);
    }
    // Silence is expected now; the deadline below ends the wait.
    handle.as_mut().set_io_timeout(max_wait + limit);

    let deadline = Instant::now() + max_wait;
    let outcome = loop {
        if arrived {
            break IdleOutcome::NewData;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break IdleOutcome::Timeout;
        }
        let event = {
            let (wait, _interrupt) = handle.wait_with_timeout(remaining);
            tokio::pin!(wait);
            let sleep = tokio::time::sleep_until(deadline);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    r = &mut wait => break IdleEvent::Server(r),
                    _ = &mut sleep => break IdleEvent::Deadline,
                    changed = shutdown.changed() => {
                        // A dropped sender means the process is going away.
                        if changed.is_err() || *shutdown.borrow_and_update() {
                            break IdleEvent::Shutdown;
                        }
                    }
                }
            }
            // `_interrupt` is dropped only here, after `wait`: it was never
            // used, so ManualInterrupt below can only mean end of stream.
        };
        match event {
            IdleEvent::Deadline | IdleEvent::Server(Ok(IdleResponse::Timeout)) => {
                break IdleOutcome::Timeout;
            }
            IdleEvent::Shutdown => break IdleOutcome::Shutdown,
            IdleEvent::Server(Ok(IdleResponse::ManualInterrupt)) => return Err(ImapError::Closed),
            IdleEvent::Server(Err(e)) => return Err(from_imap(e, "IDLE")),
            IdleEvent::Server(Ok(IdleResponse::NewData(resp))) => match resp.parsed() {
                r @ (Response::MailboxData(MailboxDatum::Exists(_) | MailboxDatum::Recent(_))
                | Response::Expunge(_)
                | Response::Vanished { .. }
                | Response::Fetch(..)) => {
                    counts.observe(r);
                    break IdleOutcome::NewData;
                }
                Response::Data {
                    status: Status::Bye,
                    outcome,
                } => {
                    let text = clip(outcome.information.as_deref().unwrap_or(""));
                    info!(text, "IMAP: server said BYE during IDLE");
                    return Err(ImapError::Closed);
                }
                other => {
                    debug!(response = ?other, "IMAP: ignored during IDLE");
                }
            },
        }
    };

    handle.as_mut().set_io_timeout(limit);
    let session = within(limit, "DONE", handle.done())
        .await?
        .map_err(|e| from_imap(e, "DONE"))?;
    Ok((session, outcome))
}

/// `AUTHENTICATE XOAUTH2`: the token first; an empty answer to the error
/// challenge a server sends on failure, so it replies with a tagged NO.
struct XOAuth2<'a> {
    user: &'a str,
    token: &'a str,
    sent: bool,
    /// The `status` of the server's error challenge (Gmail and Dovecot send
    /// `{"status":"401","schemes":"bearer","scope":…}` when they refuse the
    /// token), when there was one.
    error_status: Option<String>,
}

impl async_imap::Authenticator for &mut XOAuth2<'_> {
    type Response = String;

    fn process(&mut self, challenge: &[u8]) -> String {
        if std::mem::replace(&mut self.sent, true) {
            self.error_status = xoauth2_status(challenge);
            String::new()
        } else {
            format!("user={}\x01auth=Bearer {}\x01\x01", self.user, self.token)
        }
    }
}

/// The `status` of an XOAUTH2 error challenge; only a short code (`"401"`,
/// `"400"`), so nothing else a server put there reaches errors or logs.
fn xoauth2_status(challenge: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(challenge).ok()?;
    let status = match v.get("status")? {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!status.is_empty() && status.len() <= 8 && status.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then_some(status)
}

/// Says that a refused `AUTHENTICATE XOAUTH2` was about the access token
/// (the usual cause: it expired or was revoked), so the operator looks at
/// the token source rather than at a password.
fn xoauth2_error(e: ImapError, auth: &XOAuth2<'_>) -> ImapError {
    match e {
        ImapError::Auth(text) => ImapError::Auth(match &auth.error_status {
            Some(status) => format!(
                "XOAUTH2 access token rejected (status {status}: expired, revoked, or not \
                 valid for this user or for IMAP): {text}"
            ),
            None => format!("XOAUTH2: {text}"),
        }),
        other => other,
    }
}

/// Reads the server greeting; anything but `* OK` is refused (PREAUTH too:
/// it would skip STARTTLS and our own login).
async fn read_greeting(
    client: &mut async_imap::Client<MailStream>,
    limit: Duration,
) -> Result<(), ImapError> {
    let greeting = within(limit, "greeting", client.read_response())
        .await?
        .map_err(|e| from_io(&e, "greeting"))?;
    let Some(greeting) = greeting else {
        return Err(ImapError::Connect(
            "the server closed the connection before greeting".into(),
        ));
    };
    match greeting.parsed() {
        Response::Data {
            status: Status::Ok, ..
        } => Ok(()),
        Response::Data { status, outcome } => Err(ImapError::Connect(format!(
            "server greeting {status:?}: {}",
            clip(outcome.information.as_deref().unwrap_or(""))
        ))),
        _ => Err(ImapError::Connect("unexpected server greeting".into())),
    }
}

async fn tls_handshake(settings: &ImapSettings, tcp: TcpStream) -> Result<Transport, ImapError> {
    let connector = tls_connector(settings.ca_file.as_deref()).await?;
    let name = ServerName::try_from(settings.host.clone())
        .map_err(|_| ImapError::Tls(format!("{:?} is not a valid host name", settings.host)))?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| ImapError::Tls(format!("{}: {}", settings.host, clip(&e.to_string()))))?;
    Ok(Transport::Tls(Box::new(tls)))
}

/// webpki roots plus every certificate in `ca_file`.
async fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, ImapError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let pem = tokio::fs::read(path)
            .await
            .map_err(|e| ImapError::Tls(format!("reading CA file {}: {e}", path.display())))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.map_err(|e| ImapError::Tls(format!("CA file {}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| ImapError::Tls(format!("CA file {}: {e}", path.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(ImapError::Tls(format!(
                "CA file {} holds no PEM certificate",
                path.display()
            )));
        }
    }
    // An explicit provider: no dependence on a process-wide default.
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ImapError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

// ----------------------------------------------------------------------------
// The byte stream under async-imap: plain or TLS, buffered writes, and an
// inactivity timeout on reads and writes.

enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What the async-imap client runs on.
struct MailStream {
    /// async-imap writes a command in several small pieces and then
    /// flushes: buffer them into one packet / TLS record.
    inner: BufWriter<Transport>,
    io_timeout: Duration,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl fmt::Debug for MailStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner.get_ref() {
            Transport::Plain(_) => "plain",
            Transport::Tls(_) => "tls",
        };
        f.debug_struct("MailStream")
            .field("transport", &kind)
            .field("io_timeout", &self.io_timeout)
            .finish()
    }
}

impl MailStream {
    fn new(transport: Transport, io_timeout: Duration) -> MailStream {
        MailStream {
            inner: BufWriter::new(transport),
            io_timeout,
            read_timer: None,
            write_timer: None,
        }
    }

    fn into_transport(self) -> Transport {
        self.inner.into_inner()
    }

    /// Sets the longest silence tolerated and forgets timers left armed by
    /// an abandoned operation.
    fn set_io_timeout(&mut self, timeout: Duration) {
        self.io_timeout = timeout;
        self.read_timer = None;
        self.write_timer = None;
    }
}

/// Arms `timer` on the first `Pending`, clears it on progress, and turns
/// `Pending` into a `TimedOut` error once it fires.
fn timed<T>(
    timer: &mut Option<Pin<Box<Sleep>>>,
    limit: Duration,
    cx: &mut Context<'_>,
    poll: Poll<io::Result<T>>,
    what: &'static str,
) -> Poll<io::Result<T>> {
    match poll {
        Poll::Ready(r) => {
            *timer = None;
            Poll::Ready(r)
        }
        Poll::Pending => {
            let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    *timer = None;
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl AsyncRead for MailStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        timed(
            &mut this.read_timer,
            this.io_timeout,
            cx,
            poll,
            "no data from the IMAP server",
        )
    }
}

impl AsyncWrite for MailStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        timed(
            &mut this.write_timer,
            this.io_timeout,
            cx,
            poll,
            "the IMAP server takes no data",
        )
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        timed(
            &mut this.write_timer,
            this.io_timeout,
            cx,
            poll,
            "the IMAP server takes no data",
        )
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        timed(
            &mut this.write_timer,
            this.io_timeout,
            cx,
            poll,
            "the IMAP server takes no data",
        )
    }
}

// ----------------------------------------------------------------------------
// helpers

async fn within<F: Future>(
    limit: Duration,
    step: &'static str,
    f: F,
) -> Result<F::Output, ImapError> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| ImapError::Timeout(step))
}

/// A fetch that ends in NO (e.g. `[EXPUNGEISSUED]`: some messages were
/// expunged by another client meanwhile) still delivered the others.
fn partial_ok(res: Result<(), CmdError>, what: &str, host: &str) -> Result<(), ImapError> {
    match res {
        Ok(()) => Ok(()),
        Err(CmdError::Rejected(r)) if !r.bad => {
            warn!(host, text = %r.text, "IMAP: {what} partly refused; returning what came");
            Ok(())
        }
        Err(e) => Err(e.into_error(what)),
    }
}

fn from_io(e: &io::Error, step: &'static str) -> ImapError {
    use io::ErrorKind as K;
    match e.kind() {
        K::TimedOut => ImapError::Timeout(step),
        K::UnexpectedEof
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::BrokenPipe
        | K::NotConnected => ImapError::Closed,
        // rustls reports its errors as InvalidData.
        K::InvalidData => ImapError::Tls(format!("{step}: {}", clip(&e.to_string()))),
        // async-imap's parse errors quote the unparsable bytes (maybe a
        // message body): never pass those on.
        _ if e.to_string().contains("during parsing of") => {
            ImapError::Protocol(format!("{step}: could not parse the server's response"))
        }
        _ => ImapError::Connect(format!("{step}: {}", clip(&e.to_string()))),
    }
}

fn from_imap(e: async_imap::error::Error, step: &'static str) -> ImapError {
    use async_imap::error::Error as E;
    match e {
        E::Io(io) => from_io(&io, step),
        E::ConnectionLost => ImapError::Closed,
        E::No(s) | E::Bad(s) => ImapError::Protocol(format!("{step}: {}", outcome_text(&s))),
        E::Parse(_) => {
            ImapError::Protocol(format!("{step}: could not parse the server's response"))
        }
        E::Validate(v) => {
            ImapError::Protocol(format!("{step}: invalid character {:?} in command", v.0))
        }
        other => ImapError::Protocol(format!("{step}: {}", clip(&other.to_string()))),
    }
}

/// Login/authenticate failures: refusals become [`ImapError::Auth`]; the
/// command (which holds the secret) is never quoted.
fn auth_error(e: async_imap::error::Error, step: &'static str) -> ImapError {
    use async_imap::error::Error as E;
    match e {
        E::No(s) | E::Bad(s) => ImapError::Auth(outcome_text(&s)),
        E::Validate(_) => ImapError::Auth("the user name or secret contains a line break".into()),
        E::Parse(_) => {
            ImapError::Auth("the server's authentication challenge was not understood".into())
        }
        other => from_imap(other, step),
    }
}

/// async-imap renders NO/BAD as `code: Some(..), info: Some("text")`:
/// keep the server's text.
fn outcome_text(s: &str) -> String {
    let info = s
        .split_once("info: Some(\"")
        .and_then(|(_, rest)| rest.rsplit_once("\")"))
        .map(|(text, _)| text.replace("\\\"", "\""));
    clip(info.as_deref().unwrap_or(s))
}

/// One line, at most [`MAX_ERROR_TEXT`] characters.
fn clip(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_TEXT)
        .collect();
    if s.chars().count() > MAX_ERROR_TEXT {
        out.push('…');
    }
    out.trim().to_string()
}

fn says_nonexistent(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("[nonexistent]")
        || t.contains("exist")
        || t.contains("not found")
        || t.contains("unknown mailbox")
        || t.contains("no such")
}

fn capability_name(c: &Capability<'_>) -> String {
    match c {
        Capability::Imap4rev1 => "IMAP4REV1".to_string(),
        Capability::Auth(m) => format!("AUTH={}", m.to_ascii_uppercase()),
        Capability::Atom(a) => a.to_ascii_uppercase(),
    }
}

/// Sorted, deduplicated UIDs as IMAP sets (`1:3,7`), split so that no set
/// is much longer than [`MAX_UID_SET_LEN`]. UID 0 is not a UID and skipped.
fn uid_sets(uids: &[u32]) -> Vec<String> {
    let mut sorted: Vec<u32> = uids.iter().copied().filter(|&u| u > 0).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut sets = Vec::new();
    let mut current = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        i += 1;
        if !current.is_empty() {
            current.push(',');
        }
        if start == end {
            current.push_str(&start.to_string());
        } else {
            current.push_str(&format!("{start}:{end}"));
        }
        if current.len() >= MAX_UID_SET_LEN {
            sets.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        sets.push(current);
    }
    sets
}

/// A folder name as a command argument: modified UTF-7 (RFC 3501 5.1.3),
/// quoted. Control characters are refused.
fn mailbox_arg(folder: &str) -> Result<String, ImapError> {
    if folder.is_empty() || folder.chars().any(char::is_control) {
        return Err(ImapError::Protocol(format!(
            "invalid folder name {folder:?} (empty or control characters)"
        )));
    }
    Ok(quote(&utf7_imap(folder)))
}

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// Modified UTF-7 for mailbox names: printable ASCII as is (`&` as `&-`),
/// other runs as `&` + base64 (`,` for `/`, no padding) of UTF-16BE + `-`.
fn utf7_imap(name: &str) -> String {
    const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::IMAP_MUTF7,
        base64::engine::general_purpose::NO_PAD,
    );
    fn flush(out: &mut String, run: &mut Vec<u8>) {
        if !run.is_empty() {
            out.push('&');
            out.push_str(&B64.encode(&run));
            out.push('-');
            run.clear();
        }
    }
    let mut out = String::with_capacity(name.len());
    let mut run = Vec::new();
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut out, &mut run);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                run.extend_from_slice(&u.to_be_bytes());
            }
        }
    }
    flush(&mut out, &mut run);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_compress_ranges_and_split() {
        assert_eq!(uid_sets(&[]), Vec::<String>::new());
        assert_eq!(uid_sets(&[3, 1, 2, 7, 9, 8, 7, 0]), vec!["1:3,7:9"]);
        assert_eq!(uid_sets(&[5]), vec!["5"]);
        assert_eq!(uid_sets(&[u32::MAX, 1]), vec![format!("1,{}", u32::MAX)]);
        let many: Vec<u32> = (1..=4000).map(|u| u * 2).collect();
        let sets = uid_sets(&many);
        assert!(sets.len() > 1);
        assert!(sets.iter().all(|s| s.len() < MAX_UID_SET_LEN + 12));
        let back: Vec<u32> = sets
            .iter()
            .flat_map(|s| s.split(','))
            .map(|u| u.parse::<u32>().unwrap())
            .collect();
        assert_eq!(back, many);
    }

    #[test]
    fn folder_names_are_quoted_modified_utf7() {
        assert_eq!(mailbox_arg("INBOX").unwrap(), "\"INBOX\"");
        assert_eq!(mailbox_arg("Processed").unwrap(), "\"Processed\"");
        assert_eq!(mailbox_arg("A \"b\" \\c").unwrap(), r#""A \"b\" \\c""#);
        assert_eq!(utf7_imap("Tom & Jerry"), "Tom &- Jerry");
        assert_eq!(utf7_imap("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(utf7_imap("日本語"), "&ZeVnLIqe-");
        assert_eq!(
            utf7_imap("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert!(mailbox_arg("").is_err());
        assert!(mailbox_arg("a\r\nb").is_err());
    }

    #[test]
    fn server_texts_are_cleaned() {
        assert_eq!(
            outcome_text(
                "code: None, info: Some(\"[AUTHENTICATIONFAILED] Authentication failed.\")"
            ),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(outcome_text("plain text"), "plain text");
        assert_eq!(clip("a\r\nb"), "a  b");
        assert_eq!(clip(&"x".repeat(1000)).chars().count(), MAX_ERROR_TEXT + 1);
        assert!(says_nonexistent(
            "[NONEXISTENT] Mailbox doesn't exist: Nope"
        ));
        assert!(!says_nonexistent("[NOPERM] Permission denied"));
    }

    #[test]
    fn xoauth2_sends_the_token_once() {
        use async_imap::Authenticator as _;
        let mut a = XOAuth2 {
            user: "u@example.com",
            token: "tok",
            sent: false,
            error_status: None,
        };
        let mut auth = &mut a;
        assert_eq!(
            auth.process(b""),
            "user=u@example.com\x01auth=Bearer tok\x01\x01"
        );
        assert_eq!(
            auth.process(b"{\"status\":\"401\",\"schemes\":\"bearer\",\"scope\":\"mail\"}"),
            ""
        );
        assert_eq!(a.error_status.as_deref(), Some("401"));
    }

    #[test]
    fn xoauth2_errors_name_the_token_never_quote_it() {
        assert_eq!(xoauth2_status(b"{\"status\":400}").as_deref(), Some("400"));
        assert_eq!(xoauth2_status(b"not json"), None);
        // A server echoing something else than a short code: dropped.
        assert_eq!(xoauth2_status(b"{\"status\":\"401 tok-abc\"}"), None);
        let a = XOAuth2 {
            user: "u",
            token: "tok-abc",
            sent: true,
            error_status: Some("401".into()),
        };
        let e = xoauth2_error(
            ImapError::Auth("[AUTHENTICATIONFAILED] Authentication failed.".into()),
            &a,
        )
        .to_string();
        assert!(
            e.contains("XOAUTH2 access token rejected (status 401"),
            "{e}"
        );
        assert!(e.contains("[AUTHENTICATIONFAILED]"), "{e}");
        assert!(!e.contains("tok-abc"), "{e}");
        assert!(matches!(
            xoauth2_error(ImapError::Timeout("authenticate"), &a),
            ImapError::Timeout(_)
        ));
    }

    #[test]
    fn errors_never_quote_parsed_bytes() {
        let e = io::Error::other("Error(..) during parsing of \"secret body\"");
        let msg = from_io(&e, "fetch").to_string();
        assert!(!msg.contains("secret body"), "{msg}");
        assert!(
            from_io(&io::Error::new(io::ErrorKind::TimedOut, "x"), "fetch")
                .to_string()
                .contains("fetch")
        );
        assert!(matches!(
            from_io(&io::Error::new(io::ErrorKind::UnexpectedEof, "x"), "noop"),
            ImapError::Closed
        ));
    }

    fn assert_send<T: Send>(_: &T) {}

    /// Compiles only if the futures can run on a multi-threaded runtime.
    #[allow(dead_code)]
    fn futures_are_send(
        settings: &ImapSettings,
        s: &mut ImapSession,
        rx: &mut watch::Receiver<bool>,
    ) {
        assert_send(&ImapSession::connect(settings));
        assert_send(&s.idle(Duration::ZERO, rx));
        assert_send(&s.fetch(&[]));
        assert_send(&s.move_to(&[], "x"));
    }
}
