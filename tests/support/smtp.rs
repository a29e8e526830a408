//! A real SMTP server for the tests: `tests/support/smtp_sink.py` (Python's
//! aiosmtpd, run by Debian's `/usr/bin/python3`) on a free loopback port,
//! saving every accepted message byte for byte (see TESTING.md "SMTP").
//!
//! Recipients whose local part starts with `reject` get
//! `550 5.1.1 no such user`, with `tempfail` `451 4.3.0 try later`. With
//! [`SmtpSinkOptions::auth`] the server requires AUTH PLAIN/LOGIN as
//! [`SMTP_USER`] / [`SMTP_PASSWORD`]; with `starttls` or `implicit_tls` it
//! uses a certificate made with `openssl` at start, issued by a throwaway CA
//! whose certificate is [`SmtpSink::cert_pem_path`].
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user name the sink accepts when [`SmtpSinkOptions::auth`] is set.
pub const SMTP_USER: &str = "agent@example.com";
/// The password the sink accepts when [`SmtpSinkOptions::auth`] is set.
pub const SMTP_PASSWORD: &str = "s3cret pass";

const PYTHON: &str = "/usr/bin/python3";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether the sink can run: Debian's python3-aiosmtpd importable by
/// `/usr/bin/python3`, and `openssl` for the TLS variants.
pub fn available() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import aiosmtpd.smtp"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SmtpSinkOptions {
    /// Require AUTH PLAIN/LOGIN ([`SMTP_USER`] / [`SMTP_PASSWORD`]).
    pub auth: bool,
    /// Offer and require STARTTLS.
    pub starttls: bool,
    /// TLS from the first byte (SMTPS).
    pub implicit_tls: bool,
}

/// One message the sink accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMail {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The exact bytes received in DATA (dot-unstuffed, CRLF as sent).
    pub data: Vec<u8>,
    /// The client's `ip:port`: one value per SMTP connection.
    pub peer: String,
    /// Whether the session was TLS-protected by STARTTLS.
    pub starttls: bool,
    pub authenticated: bool,
}

impl ReceivedMail {
    /// `data` as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The raw header block (up to the first empty line), without the
    /// final CRLF.
    pub fn header_block(&self) -> String {
        let text = self.text();
        match text.find("\r\n\r\n") {
            Some(end) => text[..end].to_owned(),
            None => text,
        }
    }

    /// Raw (still encoded) values of the top-level header `name`, unfolded.
    pub fn header(&self, name: &str) -> Vec<String> {
        let block = self.header_block();
        let mut fields: Vec<String> = Vec::new();
        for line in block.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.push_str(line);
                }
            } else {
                fields.push(line.to_owned());
            }
        }
        fields
            .iter()
            .filter_map(|f| f.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

/// A running sink; killed on drop.
pub struct SmtpSink {
    pub port: u16,
    options: SmtpSinkOptions,
    dir: tempfile::TempDir,
    ca: Option<PathBuf>,
    child: Option<Child>,
}

impl SmtpSink {
    /// Starts the sink on a free port and waits until it is listening (and,
    /// without implicit TLS, has greeted with 220).
    pub fn start(options: SmtpSinkOptions) -> io::Result<SmtpSink> {
        let dir = tempfile::Builder::new().prefix("smtp-sink-").tempdir()?;
        let ca = if options.starttls || options.implicit_tls {
            Some(make_certificates(dir.path())?)
        } else {
            None
        };
        let mut sink = SmtpSink {
            port: free_port()?,
            options,
            dir,
            ca,
            child: None,
        };
        sink.spawn()?;
        Ok(sink)
    }

    /// Holds back the final `250` after DATA by `ms` (the message is already
    /// stored): a sender killed meanwhile has delivered without knowing it.
    pub fn set_data_delay(&self, ms: u64) {
        std::fs::write(
            self.dir.path().join("messages").join("data_delay_ms"),
            ms.to_string(),
        )
        .expect("write the delay");
    }

    /// The port the sink listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PEM of the CA that issued the server certificate (trust it as a
    /// `ca_file`). Panics when the sink has no TLS.
    pub fn cert_pem_path(&self) -> &Path {
        self.ca
            .as_deref()
            .expect("the sink was started without TLS")
    }

    /// The sink's working directory (messages, certificates, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every accepted message, in arrival order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        let dir = self.dir.path().join("messages");
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .collect(),
            Err(_) => return Vec::new(),
        };
        names.sort();
        names
            .iter()
            .map(|name| {
                let meta_path = dir.join(name);
                let meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&meta_path).expect("read sink envelope"))
                        .expect("sink envelope is JSON");
                let data =
                    std::fs::read(meta_path.with_extension("eml")).expect("read sink message");
                let s = |k: &str| meta[k].as_str().unwrap_or_default().to_owned();
                ReceivedMail {
                    mail_from: s("mail_from"),
                    rcpt_to: meta["rcpt_to"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                    data,
                    peer: s("peer"),
                    starttls: meta["tls"].as_bool().unwrap_or(false),
                    authenticated: meta["authenticated"].as_bool().unwrap_or(false),
                }
            })
            .collect()
    }

    /// Waits until at least `n` messages arrived (or `timeout` passed) and
    /// returns them all.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n || Instant::now() >= deadline {
                return messages;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (connections are cut); messages stay readable.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, with the same messages.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }

    /// What the server wrote to stderr (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sink.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> io::Result<()> {
        let dir = self.dir.path();
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("sink.log"))?;
        let mut cmd = Command::new(PYTHON);
        cmd.arg(SCRIPT)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(dir);
        if self.options.auth {
            cmd.arg("--auth")
                .arg(format!("{SMTP_USER}:{SMTP_PASSWORD}"));
        }
        if self.options.starttls {
            cmd.arg("--starttls");
        }
        if self.options.implicit_tls {
            cmd.arg("--implicit-tls");
        }
        if self.ca.is_some() {
            cmd.arg("--cert")
                .arg(dir.join("cert.pem"))
                .arg("--key")
                .arg(dir.join("key.pem"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "smtp sink exited with {status}: {}",
                    self.log()
                )));
            }
            if ready.exists() && self.greets() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(io::Error::other(format!(
                    "smtp sink did not start on port {}: {}",
                    self.port,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Connects; without implicit TLS also reads the 220 greeting.
    fn greets(&self) -> bool {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.options.implicit_tls {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        let ok = BufReader::new(&stream).read_line(&mut line).is_ok() && line.starts_with("220");
        let _ = std::io::Write::write_all(&mut &stream, b"QUIT\r\n");
        ok
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Makes a CA (`ca.pem`) and a server certificate for 127.0.0.1 / localhost
/// issued by it (`cert.pem`, `key.pem`) in `dir`; returns the CA's path.
fn make_certificates(dir: &Path) -> io::Result<PathBuf> {
    let run = |args: &[&str]| -> io::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca_args = vec!["req", "-x509"];
    ca_args.extend(ec);
    ca_args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Switchboard Test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca_args)?;
    let mut csr_args = vec!["req"];
    csr_args.extend(ec);
    csr_args.extend([
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&csr_args)?;
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ])?;
    Ok(dir.join("ca.pem"))
}
