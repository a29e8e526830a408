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

/// Panics, saying what to install, unless the sink can run: tests do not
/// skip without it, in CI and everywhere else.
pub fn require_aiosmtpd() {
    assert!(
        available(),
        "aiosmtpd (the SMTP sink, run by /usr/bin/python3) is needed by this test and is not \
         installed: run `bash scripts/install-deps` as root (Debian package: python3-aiosmtpd). \
         Tests do not skip: a missing server fails them."
    );
}

/// Panics, saying what to install, unless dkimpy can verify signatures.
pub fn require_dkim() {
    assert!(
        dkim_available(),
        "dkimpy (with PyNaCl, for Ed25519) is needed to verify DKIM signatures and is not \
         installed: run `bash scripts/install-deps` as root (Debian packages: python3-dkim \
         python3-nacl)."
    );
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
        // The free port may be taken by another process between the look
        // and the sink's bind (tests of other binaries run beside this one):
        // then another port.
        let mut tries = 0;
        loop {
            match sink.spawn() {
                Err(e) if tries < 5 && e.to_string().contains("address already in use") => {
                    tries += 1;
                    sink.port = free_port()?;
                }
                other => return other.map(|()| sink),
            }
        }
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

// ---------------------------------------------------------------------------
// DKIM: keys made with `openssl`, and a real verifier (dkimpy, Debian's
// python3-dkim) asked with the test's public key as the only DNS answer.

/// Whether `/usr/bin/python3` can import dkimpy (Debian's python3-dkim).
pub fn dkim_available() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import dkim, nacl"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DkimKeyKind {
    /// `openssl genpkey -algorithm RSA`: PKCS#8 (`BEGIN PRIVATE KEY`).
    RsaPkcs8 { bits: u32 },
    /// The same key rewritten as PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    RsaPkcs1 { bits: u32 },
    /// `openssl genpkey -algorithm ed25519`: PKCS#8.
    Ed25519,
    /// An RSA PKCS#8 key encrypted with a passphrase.
    RsaEncrypted,
}

/// A key pair for one test: the private key (PEM, also as a file) and the
/// TXT record that publishes its public half.
pub struct DkimTestKey {
    pub private_pem: String,
    pub key_path: PathBuf,
    /// `v=DKIM1; k=rsa|ed25519; p=…`
    pub txt: String,
    _dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) -> io::Result<Vec<u8>> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(io::Error::other(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Makes a DKIM key with `openssl` in a temporary folder.
pub fn dkim_test_key(kind: DkimKeyKind) -> io::Result<DkimTestKey> {
    use base64::Engine as _;
    let dir = tempfile::Builder::new().prefix("dkim-key-").tempdir()?;
    let d = dir.path();
    let (k, encrypted) = match kind {
        DkimKeyKind::RsaPkcs8 { bits } | DkimKeyKind::RsaPkcs1 { bits } => {
            let bits = format!("rsa_keygen_bits:{bits}");
            openssl(
                d,
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    &bits,
                    "-out",
                    "key.pem",
                ],
            )?;
            if let DkimKeyKind::RsaPkcs1 { .. } = kind {
                openssl(
                    d,
                    &["rsa", "-in", "key.pem", "-traditional", "-out", "key.pem"],
                )?;
            }
            ("rsa", false)
        }
        DkimKeyKind::Ed25519 => {
            openssl(d, &["genpkey", "-algorithm", "ed25519", "-out", "key.pem"])?;
            ("ed25519", false)
        }
        DkimKeyKind::RsaEncrypted => {
            openssl(
                d,
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:1024",
                    "-out",
                    "plain.pem",
                ],
            )?;
            openssl(
                d,
                &[
                    "pkey",
                    "-in",
                    "plain.pem",
                    "-aes256",
                    "-passout",
                    "pass:secret",
                    "-out",
                    "key.pem",
                ],
            )?;
            ("rsa", true)
        }
    };
    let key_path = d.join("key.pem");
    let private_pem = std::fs::read_to_string(&key_path)?;
    let pubkey_source = if encrypted { "plain.pem" } else { "key.pem" };
    let spki = openssl(
        d,
        &["pkey", "-in", pubkey_source, "-pubout", "-outform", "DER"],
    )?;
    // RSA: p= is the SubjectPublicKeyInfo; Ed25519 (RFC 8463): the raw 32 bytes.
    let p = if k == "ed25519" {
        &spki[spki.len().saturating_sub(32)..]
    } else {
        &spki[..]
    };
    let txt = format!(
        "v=DKIM1; k={k}; p={}",
        base64::engine::general_purpose::STANDARD.encode(p)
    );
    Ok(DkimTestKey {
        private_pem,
        key_path,
        txt,
        _dir: dir,
    })
}

/// What the verifier said.
#[derive(Debug, Clone)]
pub struct DkimVerdict {
    pub ok: bool,
    /// The DNS names it looked up.
    pub asked: Vec<String>,
    /// Its debug log (for failure messages).
    pub log: String,
}

const DKIM_VERIFY: &str = r#"
import io, json, logging, sys
import dkim
name, txt = sys.argv[1].encode(), sys.argv[2].encode()
asked = []
def dnsfunc(q, timeout=5):
    asked.append(q.decode("ascii", "replace"))
    return txt if q.rstrip(b".").lower() == name.lower() else None
log = io.StringIO()
logger = logging.getLogger("dkim-test")
logger.addHandler(logging.StreamHandler(log))
logger.setLevel(logging.DEBUG)
try:
    ok = bool(dkim.DKIM(sys.stdin.buffer.read(), logger=logger).verify(dnsfunc=dnsfunc))
except Exception as e:
    ok = False
    log.write("exception: %r\n" % (e,))
print(json.dumps({"ok": ok, "asked": asked, "log": log.getvalue()[-3000:]}))
"#;

/// Verifies the first DKIM signature of `message` with dkimpy; the only DNS
/// answer it gets is `txt` at `<selector>._domainkey.<domain>`.
pub fn dkim_verify(message: &[u8], selector: &str, domain: &str, txt: &str) -> DkimVerdict {
    use std::io::Write as _;
    let name = format!("{selector}._domainkey.{domain}");
    let mut child = Command::new(PYTHON)
        .args(["-c", DKIM_VERIFY, &name, txt])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 for dkimpy");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(message)
        .expect("message to the verifier");
    let out = child.wait_with_output().expect("the verifier finishes");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verifier output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    DkimVerdict {
        ok: v["ok"].as_bool().unwrap_or(false),
        asked: v["asked"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        log: v["log"].as_str().unwrap_or_default().to_owned(),
    }
}

/// The tags of a `DKIM-Signature` value (whitespace removed from values).
pub fn dkim_tags(value: &str) -> std::collections::BTreeMap<String, String> {
    value
        .split(';')
        .filter_map(|tag| tag.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_owned(),
                v.chars().filter(|c| !c.is_whitespace()).collect(),
            )
        })
        .collect()
}
