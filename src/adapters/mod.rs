//! Adapters: one module for each outside system, turning the configuration's
//! plain data into live connections. Engines (ingestion, the outbox) use them;
//! they use nothing of the engines.
//!
//! - [`imap`]: an IMAP account and its session (fetch, flag, move, IDLE,
//!   append), shared by mailbox ingestion and the outbox's Sent copies;
//! - [`smtp`]: building, DKIM-signing and sending replies over a pool of
//!   SMTP connections (or into a folder of `.eml` files);
//! - [`oauth_token`]: XOAUTH2 access tokens from a command or a file;
//! - [`matrix`]: a Matrix bot account (sync, join, invite, kick).
pub mod imap;
pub mod matrix;
pub mod oauth_token;
pub mod smtp;

use crate::config::{Config, MailboxKind, Problem};
use std::path::Path;

/// Problems only the adapters find in a configuration, named with their
/// keys: a DKIM key that is not one or does not fit its algorithm, a
/// `ca_file` that cannot be read or holds no certificate, a `token_command`
/// whose program is not there, a Maildir path that is not one (or whose parent
/// folder does not exist). What
/// `serve` would otherwise find only when it connects (or every second in
/// its log). Pass it to [`Config::load_checked`].
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |key: String, message: String| problems.push(Problem { key, message });
    if let Some(smtp) = &config.smtp {
        if let Some(path) = &smtp.ca_file
            && let Some(why) = ca_file_problem(path)
        {
            problem("smtp.ca_file".into(), why);
        }
        if let Some(command) = &smtp.token_command
            && let Some(why) = command_problem(command)
        {
            problem("smtp.token_command".into(), why);
        }
    }
    for (i, m) in config.mailboxes.iter().enumerate() {
        let key = format!("mailboxes[{i}]");
        if let Some(path) = &m.ca_file
            && let Some(why) = ca_file_problem(path)
        {
            problem(format!("{key}.ca_file"), why);
        }
        if let Some(command) = &m.token_command
            && let Some(why) = command_problem(command)
        {
            problem(format!("{key}.token_command"), why);
        }
        if m.kind == MailboxKind::Maildir
            && let Some(path) = &m.path
            && let Some(why) = maildir_problem(path)
        {
            problem(format!("{key}.path"), why);
        }
    }
    if let Some(smtp) = &config.smtp
        && let Err(dkim) = smtp::dkim_signer(smtp)
    {
        problems.extend(dkim);
    }
    problems
}

/// Why `path` is no file of PEM certificates to trust, if it is not.
fn ca_file_problem(path: &Path) -> Option<String> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) => return Some(format!("cannot read {}: {e}", path.display())),
    };
    let mut certificates = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        if let Err(e) = cert {
            return Some(format!("{} is not PEM: {e}", path.display()));
        }
        certificates += 1;
    }
    (certificates == 0).then(|| {
        format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )
    })
}

/// Why the program a `token_command` runs is not there, if it is not: the
/// command's first word, a path or a name looked up on `PATH`. A command
/// the shell reads in other ways (a variable, a quote, a built-in) is left
/// to run.
fn command_problem(command: &str) -> Option<String> {
    const SHELL_WORDS: &[&str] = &[
        "echo", "printf", "exec", "eval", "cd", ".", ":", "true", "false", "test", "[", "read",
        "set", "export", "command", "if", "for", "while", "case", "{", "(",
    ];
    let program = command.split_whitespace().next()?;
    if SHELL_WORDS.contains(&program)
        || program.contains([
            '=', '$', '`', '"', '\'', '(', '{', '~', '*', '?', ';', '|', '&',
        ])
    {
        return None;
    }
    if program.contains('/') {
        let path = Path::new(program);
        return match std::fs::metadata(path) {
            Err(e) => Some(format!("cannot run {program}: {e}")),
            Ok(m) if !m.is_file() => Some(format!("cannot run {program}: not a file")),
            Ok(m) if !is_executable(&m) => Some(format!(
                "cannot run {program}: not executable (chmod +x it, or write sh {program})"
            )),
            Ok(_) => None,
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file() && is_executable(&m))
    });
    (!found).then(|| format!("cannot run {program}: no such program on PATH (give its full path)"))
}

fn is_executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    m.permissions().mode() & 0o111 != 0
}

/// Why `path` is no Maildir to read, if it is not (a Maildir is read from
/// its `new/` folder).
fn maildir_problem(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        // Not there yet: a mail server makes a Maildir at its first delivery
        // (the mailbox waits for it, its state saying so), as long as the
        // folder it goes in is there; a missing parent is a wrong path.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && path
                    .parent()
                    .is_some_and(|p| p.as_os_str().is_empty() || p.is_dir()) =>
        {
            None
        }
        Err(e) => Some(format!(
            "cannot read the Maildir {}: {e} (create it with new/, cur/ and tmp/ inside)",
            path.display()
        )),
        Ok(m) if !m.is_dir() => Some(format!("{} is not a folder", path.display())),
        Ok(_) if !path.join("new").is_dir() => Some(format!(
            "{} is not a Maildir: it has no new/ folder (create new/, cur/ and tmp/ inside)",
            path.display()
        )),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_parts(text, Path::new("test.toml"), &[]).expect("loads")
    }

    const SERVICE: &str = "[[services]]\nid = \"support\"\nname = \"Support\"\n";

    #[test]
    fn files_and_programs_the_adapters_need_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let inbox = dir.path().join("inbox");
        std::fs::create_dir_all(inbox.join("new")).unwrap();
        let text = format!(
            "{SERVICE}[smtp]\nhost = \"smtp.example.com\"\nusername = \"u\"\n\
             ca_file = \"/nope/ca.pem\"\ntoken_command = \"/nope/m365-token smtp\"\n\
             [[mailboxes]]\nservice = \"support\"\nkind = \"imap\"\nhost = \"h\"\nusername = \"u\"\n\
             ca_file = \"{}\"\ntoken_command = \"no-such-token-helper-xyz support\"\n\
             [[mailboxes]]\nservice = \"support\"\nkind = \"maildir\"\npath = \"{}\"\n\
             [[mailboxes]]\nservice = \"support\"\nkind = \"maildir\"\npath = \"{}\"\n\
             [[mailboxes]]\nservice = \"support\"\nkind = \"maildir\"\npath = \"{}\"\n",
            junk.display(),
            dir.path().join("missing").join("inbox").display(),
            inbox.display(),
            // Not there yet, its folder is: the mail server makes it.
            dir.path().join("first-delivery").display(),
        );
        let told: Vec<String> = check(&config(&text))
            .iter()
            .map(|p| p.to_string())
            .collect();
        let keys: Vec<&str> = told.iter().map(|p| p.split(": ").next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "smtp.ca_file",
                "smtp.token_command",
                "mailboxes[0].ca_file",
                "mailboxes[0].token_command",
                "mailboxes[1].path",
            ],
            "{told:?}"
        );
        assert!(
            told[0].contains("/nope/ca.pem") && told[0].contains("No such file"),
            "{told:?}"
        );
        assert!(told[2].contains("holds no PEM certificate"), "{told:?}");
        assert!(told[3].contains("no-such-token-helper-xyz"), "{told:?}");

        // What exists passes: sh on PATH, a readable folder with new/.
        let text = format!(
            "{SERVICE}[smtp]\nhost = \"smtp.example.com\"\nusername = \"u\"\ntoken_command = \"sh /x/helper\"\n\
             [[mailboxes]]\nservice = \"support\"\nkind = \"maildir\"\npath = \"{}\"\n",
            inbox.display()
        );
        assert!(check(&config(&text)).is_empty());
    }
}
