//! The routing engine: one loop in every worker that offers tasks the moment
//! they can be assigned, fires each RONA at its stored deadline and returns
//! the offers of agents who went away. It is woken by the database
//! (PostgreSQL `NOTIFY` from every worker, an in-process doorbell on SQLite)
//! and sleeps until the next deadline, with a safety sweep. The rules it
//! applies are in [`crate::domain::routing`]; the transactions in the store.
use crate::config::RoutingConfig;
use crate::domain::routing::ServiceRouting;
use crate::domain::{Millis, now_millis};
use crate::metrics::Metrics;
use crate::store::{Store, routing};
use std::collections::HashMap;
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
    tokio::spawn(Engine::new(store, config, metrics).run(shutdown))
}

/// The loop's state: what it knows between rounds.
struct Engine {
    store: Store,
    metrics: Arc<Metrics>,
    grace: Millis,
    sweep: Duration,
    /// The rules of the services that make offers, read at each sweep.
    services: HashMap<String, ServiceRouting>,
    /// The next stored deadline (an offer's, or an absent agent's grace).
    next_deadline: Option<Millis>,
    last_sweep: Option<tokio::time::Instant>,
    failures: u32,
}

impl Engine {
    fn new(store: Store, config: RoutingConfig, metrics: Arc<Metrics>) -> Engine {
        Engine {
            store,
            metrics,
            grace: config.grace_ms(),
            sweep: Duration::from_millis(config.sweep_ms),
            services: HashMap::new(),
            next_deadline: None,
            last_sweep: None,
            failures: 0,
        }
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut bell = routing::bell().subscribe();
        tracing::info!(grace_ms = self.grace, "routing engine started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Whatever rang so far is handled by this round.
            bell.mark_unchanged();
            let ok = self.round().await;
            self.failures = if ok {
                0
            } else {
                self.failures.saturating_add(1)
            };
            let wait = if ok {
                self.until_next()
            } else {
                // The database failed: wait a little longer each time, up to 5 s.
                Duration::from_millis(100 * u64::from(self.failures.min(50)))
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

    /// How long to sleep: until the next deadline or the next safety sweep.
    fn until_next(&self) -> Duration {
        let sweep_left = self
            .last_sweep
            .map_or(Duration::ZERO, |at| self.sweep.saturating_sub(at.elapsed()));
        let deadline_left = self
            .next_deadline
            .map(|at| Duration::from_millis(u64::try_from(at - now_millis()).unwrap_or(0)));
        deadline_left.map_or(sweep_left, |d| d.min(sweep_left))
    }

    /// One round: when a deadline is due (or the safety sweep is), due RONAs
    /// and offers of absent agents; then offers until the queues have nothing
    /// more to give. False when the database failed.
    async fn round(&mut self) -> bool {
        let now = now_millis();
        let sweep_due = self.last_sweep.is_none_or(|at| at.elapsed() >= self.sweep);
        let deadline_due = self.next_deadline.is_some_and(|d| d <= now);
        if (sweep_due || deadline_due)
            && let Err(e) = self.sweep_once(sweep_due).await
        {
            tracing::warn!(error = %e, "routing sweep failed");
            return false;
        }
        loop {
            match self
                .store
                .route_once(self.grace, PASS_BATCH, &self.services)
                .await
            {
                Ok(pass) => {
                    for offer in &pass.offers {
                        self.metrics
                            .offers
                            .with_label_values(&[
                                offer.service_id.as_str(),
                                offer.modality.as_str(),
                            ])
                            .inc();
                        self.metrics
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
                    return false;
                }
            }
        }
        // Offers made here or by another worker bring new deadlines; a sweep
        // may have ended some. (Two index lookups.)
        match self.store.next_routing_deadline(self.grace).await {
            Ok(d) => self.next_deadline = d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read routing deadlines");
                return false;
            }
        }
        true
    }

    /// Fires due RONAs and withdraws offers of absent agents; at a safety
    /// sweep also reads the services' rules again.
    async fn sweep_once(&mut self, full: bool) -> Result<(), crate::store::StoreError> {
        if full {
            self.services = self.store.routed_services().await?;
            self.last_sweep = Some(tokio::time::Instant::now());
        }
        let fired = self.store.fire_due_offers(SWEEP_BATCH).await?;
        self.metrics.offer_result("rona", fired);
        let withdrawn = self.store.withdraw_offers_of_absent(self.grace).await?;
        self.metrics.offer_result("withdrawn", withdrawn);
        Ok(())
    }
}
