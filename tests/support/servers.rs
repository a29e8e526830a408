//! Real servers for the integration tests, started on loopback on free ports,
//! in temporary directories, and stopped afterwards (see
//! `shared/design/TESTING.md`).
//!
//! Include it from a test file with
//! `#[path = "support/servers.rs"] mod servers;` (or through `mod support;`).
//! It depends on std and `tempfile` only; the clients in here are small,
//! synchronous and blocking, meant for seeding and checking, not for testing
//! Switchboard's own clients with.
//!
//! Dovecot: any user name logs in with the password [`PASSWORD`]; a user's
//! Maildir is created on first use. Folders use Dovecot's Maildir++ layout
//! (hierarchy separator `.`). [`Dovecot::start_oauth2`] adds `XOAUTH2` and
//! `OAUTHBEARER` with access tokens checked by an [`OAuth2Server`] (a token
//! introspection endpoint run with `/usr/bin/python3`).
//! [`Dovecot::start_oauth2_submission`] also runs Dovecot's SMTP submission
//! service (same logins, XOAUTH2 included), relaying what it accepts to an
//! SMTP server of the test's (e.g. the aiosmtpd sink of `smtp.rs`).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The loopback address every test server listens on.
pub const HOST: &str = "127.0.0.1";

/// The password every Dovecot user logs in with.
pub const PASSWORD: &str = "secret";

/// How long a blocking client call waits for the server before giving up.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `start`/`stop` wait for Dovecot to come up or go down.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and
/// released).
pub fn free_port() -> u16 {
    // Never the same port twice in one test binary: a port released here is
    // free for the kernel to hand out again, and two servers of one test
    // (two workers) would then fight over it.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind((HOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// `n` distinct free ports (all bound at once, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((HOST, 0)).expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// Whether the `dovecot` binary is installed (PATH, or Debian's /usr/sbin).
/// Tests never skip when it is not: they call [`require_dovecot`].
pub fn available() -> bool {
    find_binary("dovecot").is_some() && find_binary("doveadm").is_some()
}

/// The message of a test that cannot run because `what` is missing.
pub fn missing(what: &str, packages: &str) -> String {
    format!(
        "{what} is needed by this test and is not installed: run `bash scripts/install-deps` \
         as root (Debian packages: {packages}). Tests do not skip: a missing server fails them, \
         in CI and everywhere else."
    )
}

/// Panics, saying what to install, unless Dovecot is installed.
pub fn require_dovecot() {
    assert!(
        available(),
        "{}",
        missing("Dovecot", "dovecot-imapd dovecot-lmtpd")
    );
}

/// Panics, saying what to install, unless Dovecot's submission service is.
pub fn require_submission() {
    require_dovecot();
    assert!(
        submission_available(),
        "{}",
        missing("Dovecot's SMTP submission service", "dovecot-submissiond")
    );
}

/// Panics, saying what to install, unless an [`OAuth2Server`] can run.
pub fn require_oauth2() {
    assert!(
        oauth2_available(),
        "{}",
        missing(
            "/usr/bin/python3 (the OAuth2 introspection endpoint)",
            "python3"
        )
    );
}

/// Whether Dovecot's SMTP submission service is installed (Debian's
/// `dovecot-submissiond`: `/usr/lib/dovecot/submission`), as
/// [`Dovecot::start_oauth2_submission`] needs ([`require_submission`]).
pub fn submission_available() -> bool {
    available()
        && [
            "/usr/lib/dovecot",
            "/usr/libexec/dovecot",
            "/usr/local/libexec/dovecot",
        ]
        .iter()
        .any(|d| {
            Path::new(d).join("submission").is_file()
                && Path::new(d).join("submission-login").is_file()
        })
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn other_err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(other_err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Whether an SMTP server on `port` greets with `220`.
fn smtp_greets(port: u16) -> bool {
    let Ok(s) = connect(port) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).is_ok() && line.starts_with("220")
}

fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn connect(port: u16) -> io::Result<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// What kind of Dovecot to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct DovecotOptions {
    /// `ssl = yes` with a self-signed certificate made at start: implicit TLS
    /// on [`Dovecot::imaps_port`] and STARTTLS on [`Dovecot::imap_port`]
    /// (plaintext LOGIN stays allowed on the plain port).
    pub tls: bool,
}

/// A Dovecot (IMAP + LMTP) of the test's own, on loopback, with every file
/// under [`Dovecot::dir`]. Stopped when dropped.
#[derive(Debug)]
pub struct Dovecot {
    /// Plain IMAP (STARTTLS offered when started with `tls`).
    pub imap_port: u16,
    /// Implicit-TLS IMAP, when started with `tls`.
    pub imaps_port: Option<u16>,
    /// LMTP, for delivering as an MTA would.
    pub lmtp_port: u16,
    /// SMTP submission (plain; AUTH allowed without TLS on loopback), when
    /// started with [`Dovecot::start_oauth2_submission`].
    pub submission_port: Option<u16>,
    /// The temporary directory holding config, runtime files, log and mail.
    pub dir: tempfile::TempDir,
    conf: PathBuf,
    tls: bool,
    /// The master process (run in the foreground, `-F`, in its own process
    /// group), so that it is reaped when it exits.
    master: Mutex<Option<Child>>,
    /// Between the submission service and its relay (stopped after Dovecot,
    /// when dropped).
    relay_shim: Option<AuthHidingRelay>,
}

impl Dovecot {
    /// Writes a config into a fresh temporary directory, starts Dovecot and
    /// waits until IMAP greets and LMTP accepts. Retries on other free ports
    /// if a chosen port was taken in the meantime.
    pub fn start(opts: DovecotOptions) -> io::Result<Dovecot> {
        Self::start_with(opts, None, None)
    }

    /// Like [`Dovecot::start`], with Dovecot's `oauth2` passdb in front for
    /// the `XOAUTH2` and `OAUTHBEARER` mechanisms: an access token is
    /// accepted when the introspection endpoint of `oauth2` says it is
    /// active and was issued for the user logging in (see [`OAuth2Server`]). `LOGIN` and
    /// `PLAIN` keep working with [`PASSWORD`] (the static passdb), so the
    /// seeding and checking helpers are unchanged; LMTP delivery needs no
    /// passdb. Dovecot's auth penalty stays on, as in production: a refused
    /// login is answered after 2 s, more for repeated different failures
    /// (up to 15 s), so clients need an I/O timeout above that.
    pub fn start_oauth2(opts: DovecotOptions, oauth2: &OAuth2Server) -> io::Result<Dovecot> {
        Self::start_with(opts, Some(oauth2.introspection_url()), None)
    }

    /// Like [`Dovecot::start_oauth2`], with Dovecot's SMTP submission
    /// service on [`Dovecot::submission_port`] too: `AUTH XOAUTH2` (and
    /// `OAUTHBEARER`) with tokens checked by `oauth2`, `AUTH PLAIN`/`LOGIN`
    /// with [`PASSWORD`], all over plain TCP (no TLS: loopback). Every
    /// message it accepts is relayed, as submitted (Dovecot prepends a
    /// `Received` header), to the SMTP server on `127.0.0.1:relay_port`,
    /// without AUTH or TLS, through a forwarder of the harness that hides
    /// the relay's AUTH capability from Dovecot (see `AuthHidingRelay`). The
    /// relay server must be up before mail is submitted.
    /// [`Dovecot::relay_log`] shows what Dovecot and the relay said. Needs
    /// [`submission_available`].
    pub fn start_oauth2_submission(
        opts: DovecotOptions,
        oauth2: &OAuth2Server,
        relay_port: u16,
    ) -> io::Result<Dovecot> {
        Self::start_with(opts, Some(oauth2.introspection_url()), Some(relay_port))
    }

    fn start_with(
        opts: DovecotOptions,
        introspection_url: Option<String>,
        relay_port: Option<u16>,
    ) -> io::Result<Dovecot> {
        let mut last_err = None;
        for _ in 0..4 {
            match Self::try_start(opts, introspection_url.as_deref(), relay_port) {
                Ok(d) => return Ok(d),
                Err(e) => {
                    let retry = e.to_string().contains("Address already in use");
                    last_err = Some(e);
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| other_err("dovecot did not start")))
    }

    fn try_start(
        opts: DovecotOptions,
        introspection_url: Option<&str>,
        relay_port: Option<u16>,
    ) -> io::Result<Dovecot> {
        let dovecot = find_binary("dovecot").ok_or_else(|| {
            other_err("dovecot is not installed (run scripts/install-deps as root)")
        })?;
        if relay_port.is_some() && !submission_available() {
            return Err(other_err(
                "Dovecot's submission service is not installed (dovecot-submissiond; run \
                 scripts/install-deps as root)",
            ));
        }
        let dir = tempfile::Builder::new().prefix("sb-dovecot-").tempdir()?;
        let d = dir.path().to_path_buf();
        set_mode(&d, 0o755)?;
        let mail = d.join("mail");
        std::fs::create_dir_all(&mail)?;
        // The submission service's protocol log of its relay connections.
        let rawlog = d.join("relay-rawlog");
        if relay_port.is_some() {
            std::fs::create_dir_all(&rawlog)?;
        }

        // Dovecot will not run mail processes as root: the mail belongs to an
        // unprivileged user (vmail when we are root, else ourselves).
        let (mail_user, mail_group, extra) = if is_root() {
            if !user_exists("vmail") {
                return Err(other_err(
                    "system user vmail is missing (run scripts/install-deps as root)",
                ));
            }
            run(Command::new("chown").arg("vmail:vmail").arg(&mail))?;
            if relay_port.is_some() {
                run(Command::new("chown").arg("vmail:vmail").arg(&rawlog))?;
            }
            ("vmail".to_string(), "vmail".to_string(), String::new())
        } else {
            // Rootless Dovecot: everything runs as the current user.
            let user = id_output(&["-un"])?;
            let group = id_output(&["-gn"])?;
            let extra = format!(
                "default_login_user = {user}\n\
                 default_internal_user = {user}\n\
                 default_internal_group = {group}\n\
                 first_valid_uid = 1\n\
                 first_valid_gid = 1\n\
                 service anvil {{\n  chroot =\n}}\n\
                 service imap-login {{\n  chroot =\n}}\n\
                 service lmtp {{\n  user = {user}\n}}\n"
            );
            let extra = if relay_port.is_some() {
                extra + "service submission-login {\n  chroot =\n}\n"
            } else {
                extra
            };
            (user, group, extra)
        };

        let ports = free_ports(2 + usize::from(opts.tls) + usize::from(relay_port.is_some()));
        let (imap_port, lmtp_port) = (ports[0], ports[1]);
        let imaps_port = opts.tls.then(|| ports[2]);
        let submission_port = relay_port.map(|_| ports[ports.len() - 1]);

        let ssl = if opts.tls {
            make_self_signed_cert(&d)?;
            format!(
                "ssl = yes\nssl_cert = <{0}/cert.pem\nssl_key = <{0}/key.pem\n",
                d.display()
            )
        } else {
            "ssl = no\n".to_string()
        };
        let imaps_listener = match imaps_port {
            Some(p) => format!(
                "  inet_listener imaps {{\n    address = {HOST}\n    port = {p}\n    ssl = yes\n  }}\n"
            ),
            None => "  inet_listener imaps {\n    port = 0\n  }\n".to_string(),
        };
        let dd = d.display();
        // Submission: logins as for IMAP (auth penalty included), then every
        // transaction proxied to the relay (through the shim, see
        // `AuthHidingRelay`), which gets no AUTH and, trusted, XCLIENT only if
        // it offers it.
        let relay_shim = relay_port.map(AuthHidingRelay::start).transpose()?;
        let (protocols, submission) = match (&relay_shim, submission_port) {
            (Some(shim), Some(port)) => (
                "imap lmtp submission",
                format!(
                    "submission_relay_host = {HOST}\n\
                     submission_relay_port = {}\n\
                     submission_relay_trusted = yes\n\
                     submission_relay_ssl = no\n\
                     submission_relay_rawlog_dir = {dd}/relay-rawlog\n\
                     service submission-login {{\n  inet_listener submission {{\n    address = {HOST}\n    port = {port}\n  }}\n}}\n\
                     protocol submission {{\n  mail_max_userip_connections = 100\n}}\n",
                    shim.port
                ),
            ),
            _ => ("imap lmtp", String::new()),
        };
        let (mechanisms, passdbs, userdb_extra) = match introspection_url {
            None => (
                "plain login",
                format!("passdb {{\n  driver = static\n  args = password={PASSWORD}\n}}\n"),
                "",
            ),
            Some(url) => {
                // The oauth2 passdb only ever sees the token mechanisms; the
                // static one only passwords (so a token is never checked
                // against PASSWORD, nor PASSWORD taken as a token).
                let ext = d.join("dovecot-oauth2.conf.ext");
                std::fs::write(
                    &ext,
                    format!(
                        "introspection_mode = post\n\
                         introspection_url = {url}\n\
                         force_introspection = yes\n\
                         username_attribute = username\n\
                         active_attribute = active\n\
                         active_value = true\n\
                         timeout_msecs = 10000\n"
                    ),
                )?;
                set_mode(&ext, 0o644)?;
                (
                    "plain login xoauth2 oauthbearer",
                    format!(
                        "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {}\n}}\n\
                         passdb {{\n  driver = static\n  mechanisms = plain login\n  args = password={PASSWORD}\n}}\n",
                        ext.display()
                    ),
                    // LMTP's user lookups do not authenticate: no passdb
                    // applies to them, so the userdb must not ask one.
                    " allow_all_users=yes",
                )
            }
        };
        let conf_text = format!(
            "base_dir = {dd}/run\n\
             state_dir = {dd}/state\n\
             log_path = {dd}/dovecot.log\n\
             protocols = {protocols}\n\
             listen = {HOST}\n\
             {ssl}\
             disable_plaintext_auth = no\n\
             auth_mechanisms = {mechanisms}\n\
             mail_location = maildir:{dd}/mail/%u\n\
             mail_fsync = never\n\
             verbose_proctitle = yes\n\
             {passdbs}\
             userdb {{\n  driver = static\n  args = uid={mail_user} gid={mail_group} home={dd}/mail/%u{userdb_extra}\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = {HOST}\n    port = {imap_port}\n  }}\n{imaps_listener}}}\n\
             service lmtp {{\n  inet_listener lmtp {{\n    address = {HOST}\n    port = {lmtp_port}\n  }}\n}}\n\
             protocol imap {{\n  mail_max_userip_connections = 100\n}}\n\
             {submission}\
             {extra}"
        );
        let conf = d.join("dovecot.conf");
        std::fs::write(&conf, conf_text)?;

        let dc = Dovecot {
            imap_port,
            imaps_port,
            lmtp_port,
            submission_port,
            dir,
            conf,
            tls: opts.tls,
            master: Mutex::new(None),
            relay_shim,
        };
        // From here on, Drop stops whatever did start.
        dc.launch(&dovecot)?;
        Ok(dc)
    }

    fn launch(&self, dovecot: &Path) -> io::Result<()> {
        let log_start = self.log().len();
        let out_path = self.dir.path().join("dovecot.out");
        let out_file = std::fs::File::create(&out_path)?;
        let child = Command::new(dovecot)
            .arg("-F")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(out_file.try_clone()?)
            .stderr(out_file)
            .process_group(0)
            .spawn()?;
        *self.master.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.log().get(log_start..).unwrap_or_default().to_string();
            let exited = self
                .master
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || log.contains("Address already in use") || log.contains("Fatal:")
            {
                self.kill();
                return Err(other_err(format!(
                    "dovecot -c {} failed to start ({}): {}\n{log}",
                    self.conf.display(),
                    exited.map(|s| s.to_string()).unwrap_or_default(),
                    std::fs::read_to_string(&out_path).unwrap_or_default(),
                )));
            }
            if self.greets()
                && port_accepts(self.lmtp_port)
                && self.imaps_port.is_none_or(port_accepts)
                && self.submission_port.is_none_or(smtp_greets)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(other_err(format!(
                    "dovecot did not greet on 127.0.0.1:{} within {:?}:\n{log}",
                    self.imap_port, START_TIMEOUT
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the plain IMAP port answers with a `* OK` greeting.
    fn greets(&self) -> bool {
        let Ok(s) = connect(self.imap_port) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).is_ok() && line.starts_with("* OK")
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        HOST
    }

    /// The password every user logs in with ([`PASSWORD`]).
    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// Whether it was started with TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The Dovecot configuration file.
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// The self-signed server certificate (PEM), to trust as a root in a TLS
    /// client. Its names: `localhost` and IP `127.0.0.1`. Panics when
    /// started without TLS.
    pub fn cert_pem_path(&self) -> PathBuf {
        assert!(self.tls, "Dovecot was started without tls");
        self.dir.path().join("cert.pem")
    }

    /// Dovecot's log so far (empty if none yet).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// What the submission service and its relay said to each other (the
    /// protocol logs of its relay connections, oldest first; empty without
    /// submission). For failure messages.
    pub fn relay_log(&self) -> String {
        let dir = self.dir.path().join("relay-rawlog");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        let mut out = String::new();
        for f in files {
            let text = std::fs::read(&f).unwrap_or_default();
            let _ = writeln!(out, "== {}", f.display());
            out.push_str(&String::from_utf8_lossy(&text));
        }
        out
    }

    /// The Maildir of a user (after Dovecot's lower-casing of the name).
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user.to_lowercase())
    }

    /// Stops Dovecot gracefully (SIGTERM to the master, as `doveadm stop`
    /// does: clients get `* BYE`) and waits until its master process is gone
    /// and its ports are closed; this takes Dovecot one to three seconds.
    /// Idempotent. Falls back to [`Dovecot::kill`] if it hangs.
    pub fn stop(&self) {
        self.shut_down(false);
    }

    /// Stops Dovecot at once: SIGKILL to its whole process group (a crash;
    /// clients see their connections reset). Waits until the ports are
    /// closed. Idempotent. Dropping a `Dovecot` does this.
    pub fn kill(&self) {
        self.shut_down(true);
    }

    fn shut_down(&self, hard: bool) {
        let mut guard = self.master.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut child) = guard.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = child.id();
        if hard {
            kill_group(pid);
        } else {
            signal(pid, "TERM");
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let mut killed = hard;
        let mut exited = false;
        loop {
            if !exited {
                exited = child.try_wait().ok().flatten().is_some();
            }
            if exited
                && !port_accepts(self.imap_port)
                && !port_accepts(self.lmtp_port)
                && !self.submission_port.is_some_and(port_accepts)
            {
                if !hard {
                    // Whatever the master left behind (it waits for its
                    // children, so normally nothing).
                    kill_group(pid);
                }
                return;
            }
            if Instant::now() > deadline {
                if killed {
                    panic!("dovecot ({}) did not stop", self.conf.display());
                }
                kill_group(pid);
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops and starts Dovecot again on the same ports, with the same mail.
    pub fn restart(&self) {
        self.stop();
        let dovecot = find_binary("dovecot").expect("dovecot binary");
        if let Err(e) = self.launch(&dovecot) {
            panic!("restarting dovecot: {e}");
        }
    }

    /// Whether an IMAP session of `user` on this Dovecot is in IDLE right
    /// now: its process title (`verbose_proctitle`) names the command it is
    /// running. Lets a test deliver mail exactly when a client idles.
    pub fn idling(&self, user: &str) -> bool {
        let who = format!("[{} ", user.to_lowercase());
        self.process_titles()
            .iter()
            .any(|t| t.contains("imap") && t.contains(&who) && t.contains(" IDLE]"))
    }

    /// How many sessions of `user` this Dovecot serves with `service`
    /// (`imap`, `submission`) right now, by its processes' titles.
    pub fn sessions(&self, user: &str, service: &str) -> usize {
        let who = format!("[{} ", user.to_lowercase());
        self.process_titles()
            .iter()
            .filter(|t| t.contains(&format!("{service} ")) && t.contains(&who))
            .count()
    }

    /// The titles of this Dovecot's processes (its process group).
    fn process_titles(&self) -> Vec<String> {
        let Some(master) = self
            .master
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Child::id)
        else {
            return Vec::new();
        };
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter(|p| {
                // /proc/PID/stat: "PID (comm) state ppid pgrp ...".
                std::fs::read_to_string(p.path().join("stat"))
                    .ok()
                    .and_then(|stat| {
                        let rest = stat.rsplit_once(')')?.1.to_owned();
                        rest.split_whitespace().nth(2)?.parse::<u32>().ok()
                    })
                    == Some(master)
            })
            .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .collect()
    }

    /// Disconnects every IMAP session of `user` (`doveadm kick`: each gets
    /// `* BYE`), as a provider does when the access token a session was
    /// opened with expires. Dovecot stays up. Returns whether there was a
    /// session to end; panics if doveadm fails otherwise.
    pub fn kick(&self, user: &str) -> bool {
        let doveadm = find_binary("doveadm").expect("doveadm binary");
        let out = Command::new(doveadm)
            .arg("-c")
            .arg(&self.conf)
            .arg("kick")
            .arg(user)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("doveadm kick {user}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => true,
            // EX_NOUSER: nobody to kick.
            Some(68) if text.contains("no users kicked") => false,
            _ => panic!("doveadm kick {user} ({}): {text}", out.status),
        }
    }

    /// Delivers a message to `rcpt` through LMTP, as an MTA would, with an
    /// ordinary envelope sender (Dovecot turns it into `Return-Path`; an empty
    /// one would mark the mail as automatic, see [`Dovecot::deliver_lmtp_from`]).
    pub fn deliver_lmtp(&self, rcpt: &str, raw: &[u8]) -> io::Result<()> {
        self.deliver_lmtp_from("sender@example.net", rcpt, raw)
    }

    /// Delivers a message to `rcpt` through LMTP with the envelope sender
    /// `sender` (`""` for `MAIL FROM:<>`, as bounces have). Line endings are normalised to CRLF and lines starting with
    /// `.` are dot-stuffed. Dovecot adds `Return-Path`, `Delivered-To` and
    /// `Received` headers on top; use [`Dovecot::append`] to store exact
    /// bytes.
    pub fn deliver_lmtp_from(&self, sender: &str, rcpt: &str, raw: &[u8]) -> io::Result<()> {
        let mut s = connect(self.lmtp_port)?;
        let mut r = BufReader::new(s.try_clone()?);
        smtp_expect(&mut r, "220", "greeting")?;
        smtp_send(&mut s, &mut r, "LHLO localhost", "250")?;
        smtp_send(&mut s, &mut r, &format!("MAIL FROM:<{sender}>"), "250")?;
        smtp_send(&mut s, &mut r, &format!("RCPT TO:<{rcpt}>"), "250")?;
        smtp_send(&mut s, &mut r, "DATA", "354")?;
        let mut data = dot_stuff(raw);
        data.extend_from_slice(b".\r\n");
        s.write_all(&data)?;
        s.flush()?;
        // LMTP: one reply per accepted recipient.
        smtp_expect(&mut r, "250", "end of DATA")?;
        let _ = smtp_send(&mut s, &mut r, "QUIT", "221");
        let _ = s.shutdown(Shutdown::Both);
        Ok(())
    }

    /// Stores a message in `user`'s `folder` with IMAP APPEND, exactly as
    /// given (the folder is created if missing). Panics on failure.
    pub fn append(&self, user: &str, folder: &str, raw: &[u8]) {
        if let Err(e) = self.try_append(user, folder, &[], raw) {
            panic!("IMAP APPEND to {user}/{folder}: {e}");
        }
    }

    /// Like [`Dovecot::append`], with flags (e.g. `\\Seen`), returning the
    /// new message's UID.
    pub fn try_append(
        &self,
        user: &str,
        folder: &str,
        flags: &[&str],
        raw: &[u8],
    ) -> io::Result<u32> {
        let mut c = ImapConn::login(self.imap_port, user)?;
        let uid = c.append(folder, flags, raw)?;
        c.logout();
        Ok(uid)
    }

    /// Appends many messages over one connection (fast bulk seeding);
    /// returns their UIDs. Panics on failure.
    pub fn append_many<M: AsRef<[u8]>>(&self, user: &str, folder: &str, raws: &[M]) -> Vec<u32> {
        let res = (|| -> io::Result<Vec<u32>> {
            let mut c = ImapConn::login(self.imap_port, user)?;
            let mut uids = Vec::with_capacity(raws.len());
            for raw in raws {
                uids.push(c.append(folder, &[], raw.as_ref())?);
            }
            c.logout();
            Ok(uids)
        })();
        match res {
            Ok(u) => u,
            Err(e) => panic!("IMAP APPEND to {user}/{folder}: {e}"),
        }
    }

    /// Logs in as `user`, runs each raw command (without tag, e.g.
    /// `"SELECT INBOX"`, `"UID SEARCH ALL"`, `"CREATE Processed"`) and
    /// returns the server's responses to them, one per line (CRLF), in order;
    /// the tagged completion of command *n* (from 1) starts with `c<n> `.
    /// A `NO`/`BAD` is returned, not raised. Panics if the connection or
    /// login fails. Commands needing literals or IDLE are not supported.
    pub fn imap_command(&self, user: &str, commands: &[&str]) -> String {
        let res = (|| -> io::Result<String> {
            let mut c = ImapConn::login(self.imap_port, user)?;
            let mut out = String::new();
            for (i, cmd) in commands.iter().enumerate() {
                let tag = format!("c{}", i + 1);
                let (lines, _) = c.command(&tag, cmd)?;
                for l in lines {
                    out.push_str(&String::from_utf8_lossy(&l));
                }
            }
            c.logout();
            Ok(out)
        })();
        match res {
            Ok(s) => s,
            Err(e) => panic!("IMAP as {user}: {e}"),
        }
    }

    /// The UIDs of the messages in `user`'s `folder` (`UID SEARCH ALL`).
    pub fn uids(&self, user: &str, folder: &str) -> Vec<u32> {
        let t = self.imap_command(
            user,
            &[&format!("EXAMINE {}", quote(folder)), "UID SEARCH ALL"],
        );
        assert!(t.contains("c1 OK"), "EXAMINE {folder} failed:\n{t}");
        t.lines()
            .filter_map(|l| l.strip_prefix("* SEARCH"))
            .flat_map(|rest| rest.split_whitespace().map(|n| n.parse::<u32>().unwrap()))
            .collect()
    }

    /// The flags of message `uid` in `user`'s `folder` (e.g. `\Seen`), without
    /// the session flag `\Recent`.
    pub fn flags(&self, user: &str, folder: &str, uid: u32) -> Vec<String> {
        let t = self.imap_command(
            user,
            &[
                &format!("EXAMINE {}", quote(folder)),
                &format!("UID FETCH {uid} (FLAGS)"),
            ],
        );
        let line = t
            .lines()
            .find(|l| l.starts_with("* ") && l.contains("FETCH") && l.contains("FLAGS ("))
            .unwrap_or_else(|| panic!("no FLAGS for UID {uid} in {folder}:\n{t}"));
        let start = line.find("FLAGS (").unwrap() + "FLAGS (".len();
        let end = start + line[start..].find(')').unwrap();
        line[start..end]
            .split_whitespace()
            .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
            .map(str::to_string)
            .collect()
    }

    /// The exact bytes of message `uid` in `user`'s `folder`
    /// (`UID FETCH uid BODY.PEEK[]`; does not set `\Seen`).
    pub fn fetch(&self, user: &str, folder: &str, uid: u32) -> Vec<u8> {
        let res = (|| -> io::Result<Option<Vec<u8>>> {
            let mut c = ImapConn::login(self.imap_port, user)?;
            let (_, ok) = c.command("e", &format!("EXAMINE {}", quote(folder)))?;
            if !ok {
                return Err(other_err(format!("EXAMINE {folder} failed")));
            }
            let body = c.fetch_body(uid)?;
            c.logout();
            Ok(body)
        })();
        match res {
            Ok(Some(b)) => b,
            Ok(None) => panic!("no message with UID {uid} in {user}/{folder}"),
            Err(e) => panic!("IMAP FETCH as {user}: {e}"),
        }
    }

    /// The folders of `user` (`LIST "" *`), e.g. `["INBOX", "Processed"]`.
    pub fn folders(&self, user: &str) -> Vec<String> {
        let t = self.imap_command(user, &["LIST \"\" *"]);
        t.lines()
            .filter_map(|l| l.strip_prefix("* LIST "))
            .filter_map(|l| {
                // (\flags) "." name   — name quoted or atom
                let after = &l[l.find(')')? + 1..];
                let after = after.trim_start();
                let after = after.split_once(' ')?.1.trim();
                Some(after.trim_matches('"').to_string())
            })
            .collect()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // Never panic in drop (we may already be unwinding).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.kill()));
    }
}

// ----------------------------------------------------------------------------
// Between Dovecot's submission service and its relay

/// A TCP forwarder on a free loopback port to the SMTP server on
/// `127.0.0.1:target`, passing everything on unchanged except that the
/// server's `AUTH` capability is renamed (`250-AUTH LOGIN PLAIN` becomes
/// `250-X-HIDDEN-AUTH LOGIN PLAIN`).
///
/// Why: Dovecot's submission service adds `AUTH=<user>` (RFC 4954) to
/// `MAIL FROM` when its relay offers AUTH, and the aiosmtpd sink offers AUTH
/// even when started without it, yet refuses that parameter (`555 MAIL FROM
/// parameters not recognized`). Hidden, Dovecot sends a plain `MAIL FROM`.
/// The relay sees connections from the harness, one per Dovecot relay
/// connection.
#[derive(Debug)]
struct AuthHidingRelay {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl AuthHidingRelay {
    fn start(target: u16) -> io::Result<AuthHidingRelay> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind((HOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let acceptor = std::thread::Builder::new()
            .name(format!("relay-shim-{port}"))
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = std::thread::Builder::new()
                                .name(format!("relay-shim-{port}-conn"))
                                .spawn(move || Self::forward(client, target));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })?;
        Ok(AuthHidingRelay {
            port,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// One connection: client to server byte for byte, server to client line
    /// by line with AUTH renamed; each direction's end is passed on.
    fn forward(client: TcpStream, target: u16) {
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect((HOST, target)) else {
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(mut from_client), Ok(mut to_server)) = (client.try_clone(), server.try_clone())
        else {
            return;
        };
        let upstream = std::thread::spawn(move || {
            let _ = io::copy(&mut from_client, &mut to_server);
            let _ = to_server.shutdown(Shutdown::Write);
        });
        let mut to_client = client;
        let mut from_server = BufReader::new(server);
        loop {
            let mut line = Vec::new();
            match from_server.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let is_auth = line.len() >= 8
                && line.starts_with(b"250")
                && (line[3] == b'-' || line[3] == b' ')
                && line[4..8].eq_ignore_ascii_case(b"AUTH")
                && line.get(8).is_none_or(|b| b" =\r\n".contains(b));
            if is_auth {
                line.splice(4..4, b"X-HIDDEN-".iter().copied());
            }
            if to_client.write_all(&line).is_err() {
                break;
            }
        }
        let _ = to_client.shutdown(Shutdown::Both);
        let _ = upstream.join();
    }
}

impl Drop for AuthHidingRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

// ----------------------------------------------------------------------------
// OAuth 2.0 token introspection

const PYTHON: &str = "/usr/bin/python3";
const INTROSPECT_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/oauth2_introspect.py"
);

/// Whether an [`OAuth2Server`] can run (Debian's `/usr/bin/python3`; the
/// script needs nothing beyond the standard library).
pub fn oauth2_available() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import http.server, json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The authorization server's side of OAuth 2.0, as far as an IMAP server
/// sees it: a token-introspection endpoint (RFC 7662,
/// `tests/support/oauth2_introspect.py`, a real HTTP server on loopback)
/// that knows exactly the access tokens the test issued, and which of them
/// are revoked. A Dovecot started with [`Dovecot::start_oauth2`] asks it
/// about every token presented to `AUTHENTICATE XOAUTH2`/`OAUTHBEARER`.
/// Stopped when dropped.
#[derive(Debug)]
pub struct OAuth2Server {
    port: u16,
    dir: tempfile::TempDir,
    /// token -> (user, active), mirrored into `tokens.json` for the server.
    tokens: Mutex<Vec<(String, String, bool)>>,
    child: Mutex<Option<Child>>,
}

impl OAuth2Server {
    /// Starts the endpoint on a free loopback port and waits until it
    /// answers.
    pub fn start() -> io::Result<OAuth2Server> {
        let dir = tempfile::Builder::new().prefix("sb-oauth2-").tempdir()?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = Command::new(PYTHON)
            .arg(INTROSPECT_SCRIPT)
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut server = OAuth2Server {
            port: 0,
            dir,
            tokens: Mutex::new(Vec::new()),
            child: Mutex::new(Some(child)),
        };
        server.write_tokens(&[])?;
        let ready = server.dir.path().join("ready");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = server
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(other_err(format!(
                    "oauth2_introspect.py exited with {status}: {}",
                    server.log()
                )));
            }
            if let Some(port) = std::fs::read_to_string(&ready)
                .ok()
                .and_then(|t| t.trim().parse::<u16>().ok())
                && port_accepts(port)
            {
                server.port = port;
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(other_err(format!(
                    "oauth2_introspect.py did not start within {START_TIMEOUT:?}: {}",
                    server.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where Dovecot asks (`introspection_mode = post`).
    pub fn introspection_url(&self) -> String {
        format!("http://{HOST}:{}/introspect", self.port)
    }

    /// Issues a new access token for `user`, valid until revoked. Tokens
    /// look like real ones (`ya29.`-style: letters, digits, `.`, `_`, `-`)
    /// and are unguessable, so finding one in a log is never a coincidence.
    pub fn issue(&self, user: &str) -> String {
        let token = format!("ya29.sb_{}-{}", random_hex(), random_hex());
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.push((token.clone(), user.to_lowercase(), true));
        self.write_tokens(&tokens).expect("write tokens.json");
        token
    }

    /// Revokes `token`: from now on the endpoint calls it inactive (as for
    /// an expired token). Sessions opened with it stay open, as on real
    /// servers until they end them ([`Dovecot::kick`]).
    pub fn revoke(&self, token: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let entry = tokens
            .iter_mut()
            .find(|(t, _, _)| t == token)
            .expect("revoking a token that was issued");
        entry.2 = false;
        self.write_tokens(&tokens).expect("write tokens.json");
    }

    /// How often the endpoint was asked about `token` so far (by Dovecot,
    /// once per authentication attempt).
    pub fn introspections(&self, token: &str) -> usize {
        let needle = format!("\"token\": {}", json_string(token));
        std::fs::read_to_string(self.dir.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Every request so far, one JSON line each (`token`, `active`, `mode`).
    pub fn requests(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("requests.log")).unwrap_or_default()
    }

    /// The server's own log (HTTP access lines, errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Rewrites `tokens.json` atomically (the server reads it per request).
    fn write_tokens(&self, tokens: &[(String, String, bool)]) -> io::Result<()> {
        let mut json = String::from("{");
        for (i, (token, user, active)) in tokens.iter().enumerate() {
            if i > 0 {
                json.push_str(", ");
            }
            let _ = write!(
                json,
                "{}: {{\"username\": {}, \"active\": {active}}}",
                json_string(token),
                json_string(user)
            );
        }
        json.push('}');
        let path = self.dir.path().join("tokens.json");
        let tmp = self.dir.path().join("tokens.json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(tmp, path)
    }
}

impl Drop for OAuth2Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// 64 random bits as hex, from std alone (the per-process random keys of
/// `RandomState`, a counter and the clock).
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:016x}", h.finish())
}

// ----------------------------------------------------------------------------
// helpers

fn is_root() -> bool {
    id_output(&["-u"]).map(|s| s == "0").unwrap_or(false)
}

fn id_output(args: &[&str]) -> io::Result<String> {
    let out = run(Command::new("id").args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGKILL to the process group led by `pid` (the master was started in a
/// group of its own, so that is exactly Dovecot's processes).
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

/// A self-signed certificate for `localhost` / `127.0.0.1` (not a CA, so a
/// rustls client accepts it as a trust anchor for itself) in `d/cert.pem`,
/// its key in `d/key.pem`.
fn make_self_signed_cert(d: &Path) -> io::Result<()> {
    let key = d.join("key.pem");
    let cert = d.join("cert.pem");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "3650", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args([
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment",
        ])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert))
    .map_err(|e| other_err(format!("making a certificate with openssl: {e}")))?;
    set_mode(&key, 0o644)?;
    set_mode(&cert, 0o644)?;
    Ok(())
}

/// CRLF-normalised, dot-stuffed message body, ending in CRLF.
fn dot_stuff(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 64);
    let mut at_line_start = true;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        match b {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
                at_line_start = true;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                out.push(b);
                at_line_start = false;
            }
        }
        i += 1;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads an SMTP/LMTP reply (all its lines); errors unless its code is `code`.
fn smtp_expect(r: &mut impl BufRead, code: &str, what: &str) -> io::Result<String> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(other_err(format!(
                "LMTP: connection closed at {what}: {all}"
            )));
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            break;
        }
    }
    if all.starts_with(code) {
        Ok(all)
    } else {
        Err(other_err(format!(
            "LMTP: expected {code} at {what}, got: {}",
            all.trim_end()
        )))
    }
}

fn smtp_send(w: &mut TcpStream, r: &mut impl BufRead, cmd: &str, code: &str) -> io::Result<String> {
    w.write_all(cmd.as_bytes())?;
    w.write_all(b"\r\n")?;
    w.flush()?;
    smtp_expect(r, code, cmd)
}

/// An IMAP quoted string.
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

/// A minimal blocking IMAP client: enough to log in, append and run commands.
struct ImapConn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    n: u32,
}

impl ImapConn {
    fn login(port: u16, user: &str) -> io::Result<ImapConn> {
        let w = connect(port)?;
        let r = BufReader::new(w.try_clone()?);
        let mut c = ImapConn { w, r, n: 0 };
        let greeting = c.read_response()?;
        if !greeting.starts_with(b"* OK") {
            return Err(other_err(format!(
                "IMAP greeting: {}",
                String::from_utf8_lossy(&greeting)
            )));
        }
        let (lines, ok) = c.command("l", &format!("LOGIN {} {}", quote(user), quote(PASSWORD)))?;
        if !ok {
            return Err(other_err(format!(
                "IMAP LOGIN {user}: {}",
                join_lossy(&lines)
            )));
        }
        Ok(c)
    }

    fn next_tag(&mut self) -> String {
        self.n += 1;
        format!("a{}", self.n)
    }

    /// Reads one response line, with any literals it carries, ending in CRLF.
    fn read_response(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            if self.r.read_until(b'\n', &mut line)? == 0 {
                return Err(other_err(format!(
                    "IMAP: connection closed: {}",
                    String::from_utf8_lossy(&out)
                )));
            }
            out.extend_from_slice(&line);
            match literal_len(&line) {
                Some(n) => {
                    let mut lit = vec![0; n];
                    self.r.read_exact(&mut lit)?;
                    out.extend_from_slice(&lit);
                }
                None => return Ok(out),
            }
        }
    }

    /// Sends `tag cmd`, returns every response up to and including the
    /// tagged one, and whether that was OK.
    fn command(&mut self, tag: &str, cmd: &str) -> io::Result<(Vec<Vec<u8>>, bool)> {
        write!(self.w, "{tag} {cmd}\r\n")?;
        self.w.flush()?;
        self.read_until_tagged(tag)
    }

    fn read_until_tagged(&mut self, tag: &str) -> io::Result<(Vec<Vec<u8>>, bool)> {
        let prefix = format!("{tag} ");
        let mut lines = Vec::new();
        loop {
            let l = self.read_response()?;
            let done = l.starts_with(prefix.as_bytes());
            let ok = done && l[prefix.len()..].starts_with(b"OK");
            lines.push(l);
            if done {
                return Ok((lines, ok));
            }
        }
    }

    fn append(&mut self, folder: &str, flags: &[&str], raw: &[u8]) -> io::Result<u32> {
        match self.append_once(folder, flags, raw)? {
            Ok(uid) => Ok(uid),
            Err(resp) if resp.contains("TRYCREATE") => {
                let tag = self.next_tag();
                let (lines, ok) = self.command(&tag, &format!("CREATE {}", quote(folder)))?;
                if !ok {
                    return Err(other_err(format!(
                        "IMAP CREATE {folder}: {}",
                        join_lossy(&lines)
                    )));
                }
                self.append_once(folder, flags, raw)?
                    .map_err(|resp| other_err(format!("IMAP APPEND {folder}: {resp}")))
            }
            Err(resp) => Err(other_err(format!("IMAP APPEND {folder}: {resp}"))),
        }
    }

    /// Ok(Ok(uid)) when stored, Ok(Err(response)) when the server said no.
    fn append_once(
        &mut self,
        folder: &str,
        flags: &[&str],
        raw: &[u8],
    ) -> io::Result<Result<u32, String>> {
        let tag = self.next_tag();
        let mut cmd = format!("{tag} APPEND {}", quote(folder));
        if !flags.is_empty() {
            let _ = write!(cmd, " ({})", flags.join(" "));
        }
        let _ = write!(cmd, " {{{}}}\r\n", raw.len());
        self.w.write_all(cmd.as_bytes())?;
        self.w.flush()?;
        let cont = self.read_response()?;
        if !cont.starts_with(b"+") {
            // refused before the literal (e.g. NO [TRYCREATE])
            let mut all = vec![cont];
            if !all[0].starts_with(format!("{tag} ").as_bytes()) {
                let (more, _) = self.read_until_tagged(&tag)?;
                all.extend(more);
            }
            return Ok(Err(join_lossy(&all)));
        }
        self.w.write_all(raw)?;
        self.w.write_all(b"\r\n")?;
        self.w.flush()?;
        let (lines, ok) = self.read_until_tagged(&tag)?;
        let text = join_lossy(&lines);
        if !ok {
            return Ok(Err(text));
        }
        // "aN OK [APPENDUID <validity> <uid>] ..."
        let uid = text
            .split("[APPENDUID ")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|u| u.parse().ok())
            .unwrap_or(0);
        Ok(Ok(uid))
    }

    fn fetch_body(&mut self, uid: u32) -> io::Result<Option<Vec<u8>>> {
        let tag = self.next_tag();
        write!(self.w, "{tag} UID FETCH {uid} BODY.PEEK[]\r\n")?;
        self.w.flush()?;
        let mut body = None;
        let prefix = format!("{tag} ");
        loop {
            let mut line = Vec::new();
            if self.r.read_until(b'\n', &mut line)? == 0 {
                return Err(other_err("IMAP: connection closed during FETCH"));
            }
            if line.starts_with(prefix.as_bytes()) {
                if !line[prefix.len()..].starts_with(b"OK") {
                    return Err(other_err(format!(
                        "IMAP UID FETCH: {}",
                        String::from_utf8_lossy(&line)
                    )));
                }
                return Ok(body);
            }
            if let Some(n) = literal_len(&line) {
                let mut lit = vec![0; n];
                self.r.read_exact(&mut lit)?;
                let is_body = String::from_utf8_lossy(&line).contains("BODY[]");
                if is_body && body.is_none() {
                    body = Some(lit);
                }
                // the rest of this response (e.g. ")\r\n" or "UID n)\r\n");
                // may itself end in another literal.
                loop {
                    let mut rest = Vec::new();
                    self.r.read_until(b'\n', &mut rest)?;
                    match literal_len(&rest) {
                        Some(m) => {
                            let mut skip = vec![0; m];
                            self.r.read_exact(&mut skip)?;
                        }
                        None => break,
                    }
                }
            }
        }
    }

    fn logout(mut self) {
        let tag = self.next_tag();
        let _ = self.command(&tag, "LOGOUT");
        let _ = self.w.shutdown(Shutdown::Both);
    }
}

/// `{N}` or `{N+}` at the end of a line (before CRLF): a literal follows.
fn literal_len(line: &[u8]) -> Option<usize> {
    let l = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))?;
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let digits = &l[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn join_lossy(lines: &[Vec<u8>]) -> String {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join("")
        .trim_end()
        .to_string()
}
