//! Turns raw mail into something to commit: parsed, classified, its customer
//! resolved, or a quarantine entry saying why not. Parsing runs on the blocking
//! pool under a time limit, so one pathological mail cannot stall a mailbox.
use crate::domain::customer::ResolvedCustomer;
use crate::domain::ingest::QuarantineReason;
use crate::mail::{ParseError, ParseLimits, classify, parse_message};
use crate::store::{Incoming, IncomingMail, QuarantinedMail, Store, StoreResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Limits applied to every incoming mail.
#[derive(Debug, Clone, Copy)]
pub struct MailLimits {
    pub max_message_bytes: u64,
    pub parse_timeout: Duration,
}

/// Where a mail came from, for the quarantine record.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub uid: Option<u32>,
    pub source_ref: Option<String>,
}

/// A quarantine entry for a mail too large to take in; its raw source stays where it is.
pub fn too_large(origin: Origin, size: u64, limits: &MailLimits, location: &str) -> Incoming {
    Incoming::Quarantine(QuarantinedMail {
        uid: origin.uid,
        source_ref: origin.source_ref,
        reason: QuarantineReason::TooLarge,
        detail: format!(
            "{size} bytes is over the limit of {} bytes (ingest.max_message_bytes); the message stays in {location}",
            limits.max_message_bytes
        ),
        size,
        raw: None,
    })
}

/// Customer resolutions of one sync pass, by address and name: a backlog
/// from the same senders asks the database once per sender. Made per pass,
/// so a change to the directory or the contacts counts from the next pass.
#[derive(Debug, Default)]
pub struct CustomerMemo(Mutex<HashMap<Sender, ResolvedCustomer>>);

/// A sender as the memo knows it: the address (lowercased) and the name.
type Sender = (Option<String>, Option<String>);

impl CustomerMemo {
    async fn resolve(
        &self,
        store: &Store,
        address: Option<&str>,
        name: Option<&str>,
    ) -> StoreResult<ResolvedCustomer> {
        let key = (address.map(str::to_lowercase), name.map(String::from));
        if let Some(known) = self.lock().get(&key) {
            return Ok(known.clone());
        }
        let resolved = store.resolve_customer(address, name).await?;
        let mut memo = self.lock();
        if memo.len() >= 10_000 {
            memo.clear();
        }
        memo.insert(key, resolved.clone());
        Ok(resolved)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Sender, ResolvedCustomer>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Parses and classifies one mail and resolves its customer (through `memo`).
pub async fn prepare(
    store: &Store,
    memo: &CustomerMemo,
    raw: Vec<u8>,
    origin: Origin,
    limits: &MailLimits,
) -> StoreResult<Incoming> {
    let size = raw.len() as u64;
    if size > limits.max_message_bytes {
        return Ok(too_large(origin, size, limits, "its source"));
    }
    let raw = Arc::new(raw);
    let shared = Arc::clone(&raw);
    let parse_limits = ParseLimits {
        max_message_bytes: limits.max_message_bytes as usize,
    };
    let job = tokio::task::spawn_blocking(move || {
        parse_message(&shared, &parse_limits).map(|parsed| {
            let kind = classify(&parsed, &shared);
            // Packed here, on the blocking pool beside parsing, not in the batch's transaction.
            let packed = crate::store::source::pack(&shared);
            (parsed, kind, packed)
        })
    });
    let quarantine = |reason, detail: String, raw: &Arc<Vec<u8>>| {
        Incoming::Quarantine(QuarantinedMail {
            uid: origin.uid,
            source_ref: origin.source_ref.clone(),
            reason,
            detail,
            size,
            raw: Some(raw.as_ref().clone()),
        })
    };
    let (parsed, kind, packed) = match tokio::time::timeout(limits.parse_timeout, job).await {
        Err(_) => {
            tracing::warn!(uid = origin.uid, size, "parsing timed out: quarantined");
            return Ok(quarantine(
                QuarantineReason::Timeout,
                format!("parsing took longer than {:?}", limits.parse_timeout),
                &raw,
            ));
        }
        Ok(Err(join_error)) => {
            tracing::warn!(uid = origin.uid, size, error = %join_error, "parser failed: quarantined");
            return Ok(quarantine(
                QuarantineReason::Unparseable,
                "the parser failed on this message".into(),
                &raw,
            ));
        }
        Ok(Ok(Err(ParseError::TooLarge { size, .. }))) => {
            return Ok(too_large(origin, size as u64, limits, "its source"));
        }
        Ok(Ok(Err(e))) => {
            tracing::warn!(uid = origin.uid, size, error = %e, "unparseable mail: quarantined");
            return Ok(quarantine(
                QuarantineReason::Unparseable,
                e.to_string(),
                &raw,
            ));
        }
        Ok(Ok(Ok(done))) => done,
    };
    let resolved = memo
        .resolve(
            store,
            parsed.from.as_ref().map(|a| a.email.as_str()),
            parsed.from.as_ref().and_then(|a| a.name.as_deref()),
        )
        .await?;
    let raw = Arc::try_unwrap(raw).unwrap_or_else(|shared| shared.as_ref().clone());
    Ok(Incoming::Mail(Box::new(IncomingMail {
        uid: origin.uid,
        source_ref: origin.source_ref,
        raw,
        packed,
        source_id: None,
        parsed,
        kind,
        customer: resolved.matched,
        customer_details: resolved.details,
    })))
}
