//! The `[smtp]` section of the configuration turned into live objects: the
//! transport and the DKIM signer.
use super::{DEFAULT_IDLE_TIMEOUT, DkimError, DkimSigner, SmtpSettings, Transport};
use crate::config::{Problem, SmtpConfig};
use std::time::Duration;

/// The transport `[smtp]` asks for: a folder of `.eml` files or an SMTP server.
pub fn transport(smtp: &SmtpConfig) -> Transport {
    match (&smtp.file, &smtp.host) {
        (Some(dir), _) => Transport::File(dir.clone()),
        (None, host) => Transport::Smtp(SmtpSettings {
            host: host.clone().unwrap_or_default(),
            port: smtp.port,
            tls: smtp.tls,
            username: smtp.username.clone(),
            password: smtp.resolved_password.clone(),
            xoauth2: smtp.xoauth2 || smtp.token_command.is_some(),
            token_command: smtp.token_command.clone(),
            token_file: smtp.password_file.clone().filter(|_| smtp.xoauth2),
            timeout: Duration::from_secs(smtp.timeout_secs),
            pool_max: smtp.pool_max,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            accept_invalid_certs: false,
            ca_file: smtp.ca_file.clone(),
        }),
    }
}

/// The DKIM signer `[smtp]` asks for: `None` without a key; otherwise the
/// key is parsed and checked against the algorithm, and every mistake is
/// named with its key. Reads nothing itself: the key was resolved when the
/// configuration was loaded.
pub fn dkim_signer(smtp: &SmtpConfig) -> Result<Option<DkimSigner>, Vec<Problem>> {
    let key = match &smtp.resolved_dkim_key {
        Some(key) => key,
        None if smtp.dkim_key_given() => return Ok(None), // reported where resolved
        None => {
            return if smtp.dkim_domain.is_some() || smtp.dkim_selector.is_some() {
                Err(vec![Problem {
                    key: "smtp.dkim_key_file".into(),
                    message: "dkim_domain/dkim_selector are set but no key: set dkim_key_file (or dkim_key_env)".into(),
                }])
            } else {
                Ok(None)
            };
        }
    };
    let mut problems = Vec::new();
    let mut missing = |key: &str| {
        problems.push(Problem {
            key: format!("smtp.{key}"),
            message: "required when a DKIM key is set".into(),
        })
    };
    let domain = smtp.dkim_domain.as_deref().filter(|d| !d.trim().is_empty());
    let selector = smtp
        .dkim_selector
        .as_deref()
        .filter(|d| !d.trim().is_empty());
    if domain.is_none() {
        missing("dkim_domain");
    }
    if selector.is_none() {
        missing("dkim_selector");
    }
    let (Some(domain), Some(selector)) = (domain, selector) else {
        return Err(problems);
    };
    DkimSigner::new(domain, selector, smtp.dkim_algorithm, key.expose())
        .map(Some)
        .map_err(|e| {
            let key = match &e {
                DkimError::Domain(_) => "smtp.dkim_domain",
                DkimError::Selector(_) => "smtp.dkim_selector",
                DkimError::Mismatch { .. } => "smtp.dkim_algorithm",
                _ => smtp.dkim_key_name(),
            };
            vec![Problem {
                key: key.into(),
                message: e.to_string(),
            }]
        })
}
