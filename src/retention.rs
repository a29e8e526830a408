//! The retention job: in every worker, and run once per period by whichever
//! worker claims the period first (a row in `periodic_jobs`). It empties the
//! conversation context services kept once its days are over, and deletes
//! old webhook deliveries and raw sources staged for mail that was never
//! committed. It logs what it removed, counts only.
use crate::config::Config;
use crate::store::Store;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The name of the job in `periodic_jobs`.
pub const JOB: &str = "retention";

/// How the job runs.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    pub worker_id: String,
    pub interval: Duration,
    /// The length of a day of `keep_context_days`.
    pub day_ms: i64,
    /// Delivered and dead webhook deliveries are deleted after this long.
    pub keep_deliveries: Duration,
}

impl RetentionSettings {
    pub fn from_config(config: &Config) -> RetentionSettings {
        RetentionSettings {
            worker_id: config
                .ingest
                .worker_id
                .clone()
                .unwrap_or_else(crate::store::ownership::default_worker_id),
            interval: Duration::from_secs(config.context.retention_interval_secs),
            day_ms: i64::try_from(config.context.day_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            keep_deliveries: Duration::from_secs(config.webhooks.keep_days.saturating_mul(86_400)),
        }
    }
}

/// Starts the job's loop; it runs until `shutdown`.
pub fn start(store: Store, config: &Config, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(run(store, RetentionSettings::from_config(config), shutdown))
}

/// One run: what it removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub context_records: u64,
    pub deliveries: u64,
    pub orphan_sources: u64,
}

/// A staged raw source no message points at is deleted after this long (a
/// batch commits seconds after staging its sources).
const ORPHAN_SOURCE_AGE_MS: i64 = 24 * 3600 * 1000;

/// Runs the job now (whoever calls it: the loop claims its period first).
pub async fn run_once(
    store: &Store,
    settings: &RetentionSettings,
) -> crate::store::StoreResult<Removed> {
    let context_records = store.purge_expired_context(settings.day_ms).await?;
    let keep = i64::try_from(settings.keep_deliveries.as_millis()).unwrap_or(i64::MAX);
    let deliveries = store
        .prune_deliveries(crate::domain::now_millis().saturating_sub(keep))
        .await?;
    let orphan_sources = store
        .prune_orphan_sources(crate::domain::now_millis().saturating_sub(ORPHAN_SOURCE_AGE_MS))
        .await?;
    Ok(Removed {
        context_records,
        deliveries,
        orphan_sources,
    })
}

async fn run(store: Store, settings: RetentionSettings, mut shutdown: watch::Receiver<bool>) {
    let period = i64::try_from(settings.interval.as_millis()).unwrap_or(i64::MAX);
    // Looking often costs one small UPDATE; the period is what counts.
    let tick = settings.interval.min(Duration::from_secs(60));
    loop {
        if *shutdown.borrow() {
            break;
        }
        match store
            .claim_periodic_job(JOB, period, &settings.worker_id)
            .await
        {
            Ok(true) => match run_once(&store, &settings).await {
                Ok(r) => tracing::info!(
                    context_records = r.context_records,
                    webhook_deliveries = r.deliveries,
                    orphan_sources = r.orphan_sources,
                    "retention: expired data removed"
                ),
                Err(e) => tracing::warn!(error = %e, "retention job failed"),
            },
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot claim the retention job"),
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            () = tokio::time::sleep(tick) => {}
        }
    }
}
