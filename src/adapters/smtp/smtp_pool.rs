//! Our SMTP connection pool (see [`SmtpPool`]).
use super::*;

/// Our own pool of SMTP connections. lettre's pooled transport is not used
/// because it never sets `TCP_NODELAY`: it writes a message and its final
/// `.` separately, and Nagle's algorithm then holds the `.` back until the
/// server's delayed ACK, about 40 ms per message.
///
/// A connection is only ever in the idle list between transactions, in step
/// with the server; one whose send failed midway, timed out or was dropped
/// is closed, never reused. At most `pool_max` sends (and so connections)
/// at once.
pub(super) struct SmtpPool {
    host: String,
    port: u16,
    tls: TlsMode,
    tls_parameters: Option<TlsParameters>,
    login: Option<Login>,
    hello: ClientId,
    timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<IdleConnection>>,
    permits: Semaphore,
    reaper: AtomicBool,
    pub(super) server: String,
}

/// How a new connection logs in.
enum Login {
    /// AUTH PLAIN or LOGIN with a password.
    Password(Credentials),
    /// AUTH XOAUTH2 with an access token for `user`.
    OAuth { user: String, token: TokenSource },
}

/// Where an XOAUTH2 access token comes from: fixed at start, or fetched
/// again for every new connection (tokens live about an hour).
enum TokenSource {
    Fixed(Secret),
    Command(String),
    File(PathBuf),
}

struct IdleConnection {
    conn: AsyncSmtpConnection,
    since: Instant,
}

/// Where a transaction failed.
enum Stage {
    /// `MAIL FROM`, the first command: nothing of the message was sent.
    Mail,
    /// `RCPT TO` of this recipient.
    Rcpt(String),
    Later,
}

impl SmtpPool {
    pub(super) fn new(s: SmtpSettings) -> Result<SmtpPool, SendError> {
        if s.host.trim().is_empty() {
            return Err(SendError::Invalid("SMTP host is empty".into()));
        }
        let tls_parameters = match s.tls {
            TlsMode::None => None,
            TlsMode::Starttls | TlsMode::Implicit => Some(tls_parameters(&s)?),
        };
        let token = match (&s.token_command, &s.token_file, &s.password) {
            (Some(command), _, _) => Some(TokenSource::Command(command.clone())),
            (None, Some(path), _) => Some(TokenSource::File(path.clone())),
            (None, None, Some(p)) if s.xoauth2 => Some(TokenSource::Fixed(p.clone())),
            _ => None,
        };
        let login = match (&s.username, token, &s.password) {
            (Some(user), Some(token), _) => Some(Login::OAuth {
                user: user.clone(),
                token,
            }),
            (Some(_), None, None) if s.xoauth2 => {
                return Err(SendError::Invalid(
                    "XOAUTH2 needs an access token: a password, token file or token command".into(),
                ));
            }
            (Some(user), None, password) => Some(Login::Password(Credentials::new(
                user.clone(),
                password
                    .as_ref()
                    .map(|p| p.expose().to_owned())
                    .unwrap_or_default(),
            ))),
            (None, None, Some(_)) => {
                return Err(SendError::Invalid(
                    "an SMTP password is set without a username".into(),
                ));
            }
            (None, Some(_), _) => {
                return Err(SendError::Invalid("XOAUTH2 needs a username".into()));
            }
            (None, None, None) if s.xoauth2 => {
                return Err(SendError::Invalid("XOAUTH2 needs a username".into()));
            }
            (None, None, None) => None,
        };
        let pool_max = s.pool_max.max(1) as usize;
        Ok(SmtpPool {
            server: format!("{}:{}", s.host, s.port),
            host: s.host,
            port: s.port,
            tls: s.tls,
            tls_parameters,
            login,
            hello: ClientId::default(),
            timeout: s.timeout,
            idle_timeout: s.idle_timeout.max(Duration::from_millis(100)),
            idle: Mutex::new(Vec::with_capacity(pool_max)),
            permits: Semaphore::new(pool_max),
            reaper: AtomicBool::new(false),
        })
    }

    pub(super) async fn send(
        self: &Arc<Self>,
        envelope: &lettre::address::Envelope,
        bytes: &[u8],
    ) -> Result<String, SendError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SendError::Transient("sender closed".into()))?;
        let mib = u32::try_from(bytes.len().div_ceil(1 << 20)).unwrap_or(u32::MAX);
        let deadline = self.timeout.saturating_mul(mib.saturating_add(3));
        // On a timeout the future, and with it the connection, is dropped:
        // only finished transactions return a connection to the pool.
        match tokio::time::timeout(deadline, self.send_within(envelope, bytes)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Transient(format!(
                "no answer from {} within {} s",
                self.server,
                deadline.as_secs()
            ))),
        }
    }

    async fn send_within(
        self: &Arc<Self>,
        envelope: &lettre::address::Envelope,
        bytes: &[u8],
    ) -> Result<String, SendError> {
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            if let Err(e) = check_capabilities(&conn, envelope, bytes) {
                self.put_idle(conn);
                return Err(e);
            }
            match transaction(&mut conn, envelope, bytes).await {
                Ok(response) => {
                    self.put_idle(conn);
                    return Ok(response_text(&response));
                }
                // The first command on a connection that sat in the pool
                // failed: the server has closed it (idle timeout, per
                // connection limit, restart). Nothing was sent: use another.
                Err((Stage::Mail, e)) if reused && !e.is_permanent() => {
                    tracing::debug!(server = %self.server, error = %e, "pooled SMTP connection is gone; reconnecting");
                }
                Err((stage, e)) => {
                    // A complete reply (other than 421, closing): the session
                    // is in step; RSET ends the transaction and keeps it.
                    let in_step = e.status().is_some_and(|c| c.to_string() != "421");
                    if in_step && conn.command(Rset).await.is_ok() {
                        self.put_idle(conn);
                    }
                    let error = classify(&e);
                    // The agent is told which address was refused.
                    return Err(match (stage, e.status().is_some()) {
                        (Stage::Rcpt(to), true) => error.about(&format!("recipient {to}")),
                        _ => error,
                    });
                }
            }
        }
    }

    /// A new connection: TCP (with `TCP_NODELAY`), TLS as configured, the
    /// greeting, EHLO and AUTH, all within `timeout`.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        // A fresh token first, under its own time limit (the command is
        // stopped, with its children, when it hangs).
        let oauth = match &self.login {
            Some(Login::OAuth { user, token }) => Some(Credentials::new(
                user.clone(),
                self.access_token(token).await?.expose().to_owned(),
            )),
            _ => None,
        };
        let setup = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| {
                    SendError::Transient(format!("cannot connect to {}: {e}", self.server))
                })?;
            tcp.set_nodelay(true).map_err(|e| {
                SendError::Transient(format!("socket option for {}: {e}", self.server))
            })?;
            let stream: Box<dyn AsyncTokioStream> = match (&self.tls, &self.tls_parameters) {
                (TlsMode::Implicit, Some(params)) => Box::new(
                    implicit_tls::ImplicitTls::handshake(tcp, params.clone())
                        .await
                        .map_err(|e| classify(&e))?,
                ),
                _ => Box::new(tcp),
            };
            let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
                .await
                .map_err(|e| classify(&e))?;
            if let (TlsMode::Starttls, Some(params)) = (&self.tls, &self.tls_parameters) {
                conn.starttls(params.clone(), &self.hello)
                    .await
                    .map_err(|e| classify(&e))?;
            }
            match &self.login {
                None => {}
                Some(Login::Password(credentials)) => {
                    conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                        .await
                        .map_err(|e| classify(&e))?;
                }
                Some(Login::OAuth { .. }) => {
                    if !conn
                        .server_info()
                        .supports_auth_mechanism(Mechanism::Xoauth2)
                    {
                        // No token would help: a configuration problem.
                        return Err(SendError::Permanent(format!(
                            "{} does not offer AUTH XOAUTH2 (check the host, port and TLS mode)",
                            self.server
                        )));
                    }
                    if let Some(credentials) = &oauth {
                        conn.auth(&[Mechanism::Xoauth2], credentials)
                            .await
                            .map_err(|e| self.oauth_refused(&e))?;
                    }
                }
            }
            Ok(conn)
        };
        match tokio::time::timeout(self.timeout, setup).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Transient(format!(
                "{} did not complete the SMTP greeting, TLS and login within {} s",
                self.server,
                self.timeout.as_secs()
            ))),
        }
    }

    /// The access token to log in with now.
    async fn access_token(&self, source: &TokenSource) -> Result<Secret, SendError> {
        let fetched = match source {
            TokenSource::Fixed(token) => return Ok(token.clone()),
            TokenSource::Command(command) => {
                crate::adapters::oauth_token::from_command(command, self.timeout).await
            }
            TokenSource::File(path) => crate::adapters::oauth_token::from_file(path).await,
        };
        fetched.map_err(|e| SendError::Transient(format!("cannot get an XOAUTH2 token: {e}")))
    }

    /// A refused XOAUTH2 login is temporary: tokens expire and are renewed,
    /// so the reply waits for a fresh one instead of failing for good (it
    /// still fails after `max_attempts`). lettre reports the server's
    /// error challenge as a client error; say what it means.
    fn oauth_refused(&self, e: &lettre::transport::smtp::Error) -> SendError {
        // 535 (or the error challenge lettre cannot answer, a client error)
        // is what an expired or revoked token gets. Anything else keeps its
        // own meaning: a broken connection is temporary, and a policy
        // refusal such as "SMTP AUTH disabled" (5.7.139) or 534 is permanent
        // with the server's words.
        let refused_token = e.is_client()
            || (e.is_permanent() && e.status().is_some_and(|c| c.to_string() == "535"));
        if !refused_token {
            return classify(e);
        }
        let status = e.status().map(|c| format!(" ({c})")).unwrap_or_default();
        let detail = e.source().map(|s| format!(": {s}")).unwrap_or_default();
        SendError::Transient(format!(
            "{} refused the XOAUTH2 login{status}: the access token is expired, revoked or not \
             valid for this user or for SMTP{detail}",
            self.server
        ))
    }

    /// The most recently used idle connection that has not expired.
    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.idle_timeout {
                return Some(c.conn);
            }
        }
        None
    }

    fn put_idle(self: &Arc<Self>, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(IdleConnection {
                conn,
                since: Instant::now(),
            });
        self.start_reaper();
    }

    /// A task that closes expired idle connections (QUIT) until the pool is
    /// dropped; started on the first connection put back.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaper.store(false, Ordering::Release);
            return;
        };
        let pool: Weak<SmtpPool> = Arc::downgrade(self);
        let every = self.idle_timeout / 2;
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { break };
                let expired: Vec<IdleConnection> = {
                    let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                    let (expired, keep) = std::mem::take(&mut *idle)
                        .into_iter()
                        .partition(|c| c.since.elapsed() >= pool.idle_timeout);
                    *idle = keep;
                    expired
                };
                drop(pool);
                for mut c in expired {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), c.conn.command(Quit)).await;
                }
            }
        });
    }
}

/// What lettre's own `send` refuses before the transaction.
fn check_capabilities(
    conn: &AsyncSmtpConnection,
    envelope: &lettre::address::Envelope,
    bytes: &[u8],
) -> Result<(), SendError> {
    let info = conn.server_info();
    if !envelope_is_ascii(envelope) && !info.supports_feature(Extension::SmtpUtfEight) {
        return Err(SendError::Permanent(
            "an address is not ASCII and the server does not support SMTPUTF8".into(),
        ));
    }
    if !bytes.is_ascii() && !info.supports_feature(Extension::EightBitMime) {
        return Err(SendError::Permanent(
            "the message is not 7-bit and the server does not support 8BITMIME".into(),
        ));
    }
    Ok(())
}

fn envelope_is_ascii(envelope: &lettre::address::Envelope) -> bool {
    envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .all(|a| AsRef::<str>::as_ref(a).is_ascii())
}

/// MAIL, RCPT for each recipient, DATA and the message; stops at the first
/// refusal (one refused recipient: nothing is sent).
async fn transaction(
    conn: &mut AsyncSmtpConnection,
    envelope: &lettre::address::Envelope,
    bytes: &[u8],
) -> Result<lettre::transport::smtp::response::Response, (Stage, lettre::transport::smtp::Error)> {
    let mut parameters = Vec::new();
    if !envelope_is_ascii(envelope) {
        parameters.push(MailParameter::SmtpUtfEight);
    }
    if !bytes.is_ascii() {
        parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    conn.command(Mail::new(envelope.from().cloned(), parameters))
        .await
        .map_err(|e| (Stage::Mail, e))?;
    let later = |e| (Stage::Later, e);
    for to in envelope.to() {
        conn.command(Rcpt::new(to.clone(), vec![]))
            .await
            .map_err(|e| (Stage::Rcpt(to.to_string()), e))?;
    }
    conn.command(Data).await.map_err(later)?;
    // lettre ends the data with CRLF "." CRLF even after a final CRLF of the
    // message, which the server would keep as an extra empty line: leave
    // ours out, so the server stores exactly `bytes`.
    conn.message(bytes.strip_suffix(b"\r\n").unwrap_or(bytes))
        .await
        .map_err(later)
}

/// SMTPS: TLS from the first byte, before the greeting.
mod implicit_tls {
    // `AsyncNetworkStream` is public but deprecated in lettre 0.11; it is the
    // only way to use lettre's own TLS set-up (the same certificate checks as
    // STARTTLS) on a socket of ours before `connect_with_transport` reads the
    // greeting. It speaks futures-io, which lettre enables in futures-util.
    #![allow(deprecated)]

    use std::io;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::io::{AsyncRead as FuturesRead, AsyncWrite as FuturesWrite};
    use lettre::transport::smtp::client::{AsyncNetworkStream, AsyncTokioStream, TlsParameters};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;

    #[derive(Debug)]
    pub(super) struct ImplicitTls(AsyncNetworkStream);

    impl ImplicitTls {
        pub(super) async fn handshake(
            tcp: TcpStream,
            params: TlsParameters,
        ) -> Result<ImplicitTls, lettre::transport::smtp::Error> {
            let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
            stream.upgrade_tls(params).await?;
            Ok(ImplicitTls(stream))
        }
    }

    impl AsyncTokioStream for ImplicitTls {
        fn peer_addr(&self) -> io::Result<SocketAddr> {
            self.0.peer_addr()
        }
    }

    impl AsyncRead for ImplicitTls {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let unfilled = buf.initialize_unfilled();
            match Pin::new(&mut self.get_mut().0).poll_read(cx, unfilled) {
                Poll::Ready(Ok(n)) => {
                    buf.advance(n);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        }
    }

    impl AsyncWrite for ImplicitTls {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_close(cx)
        }
    }
}

fn tls_parameters(s: &SmtpSettings) -> Result<TlsParameters, SendError> {
    let mut builder = TlsParameters::builder(s.host.clone());
    if let Some(path) = &s.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| SendError::Invalid(format!("smtp.ca_file {}: {e}", path.display())))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| SendError::Invalid(format!("smtp.ca_file {}: {e}", path.display())))?;
        builder = builder.add_root_certificate(cert);
    }
    if s.accept_invalid_certs {
        builder = builder.dangerous_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| SendError::Invalid(format!("TLS settings: {e}")))
}

fn response_text(r: &lettre::transport::smtp::response::Response) -> String {
    let lines: Vec<&str> = r.message().collect();
    if lines.is_empty() {
        r.code().to_string()
    } else {
        format!("{} {}", r.code(), lines.join(" "))
    }
}

/// Maps a lettre SMTP error to the retry classes.
fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    let detail = e.source().map(|s| s.to_string()).unwrap_or_default();
    let server_text = |code: String| {
        if detail.is_empty() {
            code
        } else {
            format!("{code} {detail}")
        }
    };
    if e.is_permanent() {
        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
        SendError::Permanent(server_text(code))
    } else if e.is_transient() {
        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
        SendError::Transient(server_text(code))
    } else if e.is_client() {
        // The server cannot take this message as it is (no common AUTH
        // mechanism, no STARTTLS where it is required): retrying won't help.
        SendError::Permanent(e.to_string())
    } else {
        // Connection refused, DNS, TLS handshake, network, timeouts or a
        // garbled reply: try again later.
        SendError::Transient(e.to_string())
    }
}
