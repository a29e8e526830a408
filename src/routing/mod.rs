//! The routing engine: one loop in every worker that offers tasks the moment
//! they can be assigned, fires each RONA at its stored deadline and returns
//! the offers of agents who went away. It is woken by the database
//! (PostgreSQL `NOTIFY` from every worker, an in-process doorbell on SQLite)
//! and sleeps until the next deadline, with a safety sweep. The rules it
//! applies are in [`crate::domain::routing`]; the transactions in the store.
use crate::config::RoutingConfig;
use crate::metrics::Metrics;
use crate::store::{Store, routing};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Tasks one pass offers at most (a pass is one transaction).
pub const PASS_BATCH: usize = 200;
/// Tasks whose due offers one sweep fires at most before routing again.
const SWEEP_BATCH: u32 = 500;

/// Starts the engine; it runs until `shutdown`.
pub fn start(
    store: Store,
    config: RoutingConfig,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(store, config, metrics, shutdown))
}

async fn run(
    store: Store,
    config: RoutingConfig,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let grace = config.grace_ms();
    let sweep = Duration::from_millis(config.sweep_ms);
    let mut bell = routing::bell().subscribe();
    let mut failures = 0u32;
    tracing::info!(
        grace_secs = config.presence_grace_secs,
        "routing engine started"
    );
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Whatever rang so far is handled by this round.
        bell.mark_unchanged();
        let ok = round(&store, &metrics, grace).await;
        failures = if ok { 0 } else { failures.saturating_add(1) };
        let wait = if ok {
            let now = crate::domain::now_millis();
            match store.next_routing_deadline(grace).await {
                Ok(Some(at)) => {
                    Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(sweep)
                }
                Ok(None) => sweep,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read routing deadlines");
                    sweep
                }
            }
        } else {
            // The database failed: wait a little longer each time, up to 5 s.
            Duration::from_millis(100 * u64::from(failures.min(50)))
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            changed = bell.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(wait).await;
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("routing engine stopped");
}

/// One round: due RONAs, offers of absent agents, then offers until the
/// queues have nothing more to give. False when the database failed.
async fn round(store: &Store, metrics: &Metrics, grace: i64) -> bool {
    let mut ok = true;
    match store.fire_due_offers(SWEEP_BATCH).await {
        Ok(n) => metrics.offer_result("rona", n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot fire due offers");
            ok = false;
        }
    }
    match store.withdraw_offers_of_absent(grace).await {
        Ok(n) => metrics.offer_result("withdrawn", n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot withdraw offers of absent agents");
            ok = false;
        }
    }
    loop {
        match store.route_once(grace, PASS_BATCH).await {
            Ok(pass) => {
                for offer in &pass.offers {
                    metrics
                        .offers
                        .with_label_values(&[offer.service_id.as_str(), offer.modality.as_str()])
                        .inc();
                    metrics
                        .time_to_offer
                        .with_label_values(&[offer.modality.as_str()])
                        .observe(offer.waited_ms.max(0) as f64 / 1000.0);
                }
                if !pass.offers.is_empty() {
                    tracing::debug!(offers = pass.offers.len(), "offers made");
                }
                if !pass.more {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "routing pass failed");
                ok = false;
                break;
            }
        }
    }
    ok
}
