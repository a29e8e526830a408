//! The process's Prometheus metrics (the `prometheus` crate): counters and
//! histograms that engines and handlers update, and the text exposition that
//! `GET /metrics` serves together with gauges read from the database at
//! scrape time.
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
    Registry, TextEncoder,
};

/// Counters and histograms of this process (they restart at zero, as
/// Prometheus expects; several workers are summed by the query).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounter,
    /// Tasks created, by service, modality and source (`api`, `mail`, `chat`).
    pub tasks_created: IntCounterVec,
    pub pickups: IntCounter,
    pub saves: IntCounter,
    /// Offers made, by service and modality.
    pub offers: IntCounterVec,
    /// How offers ended, by result: accepted, declined, rona, withdrawn, cancelled.
    pub offer_results: IntCounterVec,
    /// Seconds from a task entering its queue to its offer.
    pub time_to_offer: HistogramVec,
    /// Seconds from an offer to its accept.
    pub time_to_accept: Histogram,
    /// Chat events taken in, by channel, type and result (`applied`, `replay`).
    pub chat_events: IntCounterVec,
    /// Chat webhook deliveries refused, by reason (nothing of them is stored).
    pub chat_refused: IntCounterVec,
    /// Seconds from a chat event's arrival to its commit, by channel kind.
    pub chat_intake_seconds: HistogramVec,
    /// Open-chat handles followed, by outcome (`opened`, `not_yours`, `transferred`, `over`).
    pub chat_handles: IntCounterVec,
    /// Relayed chat replies, by channel and outcome: `sent`, `retry` (refused,
    /// tried again later), `failed` (given up).
    pub chat_replies: IntCounterVec,
    /// Seconds mailbox workers spent per stage of ingestion: `fetch` (IMAP
    /// sizes and bodies), `prepare` (parse, classify, pack, customer lookup),
    /// `commit` (the batch transactions), `wait` (the next batch waiting for
    /// the previous commit), `after` (`\Seen` or move on the server).
    pub ingest_stage_seconds: CounterVec,
    /// Mail taken in, by mailbox and what became of it: `queued` (a new
    /// task), `appended` (to an open task), `reopened` (a new task in a
    /// known conversation), `attached` (automatic mail on its conversation,
    /// no task), `recorded` (automatic mail kept without a conversation),
    /// `duplicate`, `quarantined`.
    pub ingest_mail: IntCounterVec,
    /// Outbound webhook attempts, by result: `delivered`, `failed` (to be
    /// retried), `dead` (dead-lettered).
    pub webhook_attempts: IntCounterVec,
    /// Seconds from a task change to its delivery to a subscriber.
    pub webhook_delivery_seconds: Histogram,
    /// Reply sending attempts, by result: `sent`, `retry` (a transient
    /// failure, tried again later), `failed` (given up).
    pub replies: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("a valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let time_to_offer = HistogramVec::new(
            HistogramOpts::new(
                "switchboard_time_to_offer_seconds",
                "Time from a task entering its queue to its offer.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                900.0,
            ]),
            &["modality"],
        )
        .expect("a valid histogram");
        registry
            .register(Box::new(time_to_offer.clone()))
            .expect("registered once");
        let time_to_accept = Histogram::with_opts(
            HistogramOpts::new(
                "switchboard_time_to_accept_seconds",
                "Time from an offer to its accept.",
            )
            .buckets(vec![
                0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
            ]),
        )
        .expect("a valid histogram");
        registry
            .register(Box::new(time_to_accept.clone()))
            .expect("registered once");
        let chat_intake_seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchboard_chat_intake_seconds",
                "Time from a chat event's arrival to its commit.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["kind"],
        )
        .expect("a valid histogram");
        registry
            .register(Box::new(chat_intake_seconds.clone()))
            .expect("registered once");
        let webhook_delivery_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "switchboard_webhook_delivery_seconds",
                "Time from a task change to its delivery to a subscriber (retries included).",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
            ]),
        )
        .expect("a valid histogram");
        registry
            .register(Box::new(webhook_delivery_seconds.clone()))
            .expect("registered once");
        Metrics {
            webhook_attempts: counter_vec(
                &registry,
                "switchboard_webhook_attempts_total",
                "Outbound webhook attempts, by result: delivered, failed (retried later), dead (dead-lettered).",
                &["result"],
            ),
            webhook_delivery_seconds,
            replies: counter_vec(
                &registry,
                "switchboard_replies_total",
                "Reply sending attempts, by result: sent, retry (a transient failure, tried again later), failed (given up).",
                &["result"],
            ),
            chat_events: counter_vec(
                &registry,
                "switchboard_chat_events_total",
                "Chat events taken in, by channel, type and result (applied, replay).",
                &["channel", "type", "result"],
            ),
            chat_refused: counter_vec(
                &registry,
                "switchboard_chat_refused_total",
                "Chat webhook deliveries refused, by reason.",
                &["reason"],
            ),
            chat_handles: counter_vec(
                &registry,
                "switchboard_chat_handles_followed_total",
                "Open-chat handles followed, by outcome.",
                &["outcome"],
            ),
            chat_replies: counter_vec(
                &registry,
                "switchboard_chat_replies_total",
                "Agents' replies relayed into chats, by channel and outcome (sent, retry, failed).",
                &["channel", "outcome"],
            ),
            chat_intake_seconds,
            http_requests: counter(
                &registry,
                "switchboard_http_requests_total",
                "HTTP requests served.",
            ),
            tasks_created: counter_vec(
                &registry,
                "switchboard_tasks_created_total",
                "Tasks created, by source: api (posted), mail (ingested), chat.",
                &["service", "modality", "source"],
            ),
            pickups: counter(
                &registry,
                "switchboard_pickups_total",
                "Tasks picked up by agents.",
            ),
            saves: counter(
                &registry,
                "switchboard_sessions_saved_total",
                "User sessions saved.",
            ),
            offers: counter_vec(
                &registry,
                "switchboard_offers_total",
                "Offers made to agents.",
                &["service", "modality"],
            ),
            offer_results: counter_vec(
                &registry,
                "switchboard_offer_results_total",
                "How offers ended: accepted, declined, rona, withdrawn, cancelled.",
                &["result"],
            ),
            ingest_mail: counter_vec(
                &registry,
                "switchboard_ingest_mail_total",
                "Mail taken in, by mailbox and outcome: queued, appended, reopened, attached, recorded (automatic mail without a conversation), duplicate, quarantined. A mail an operator retries or releases from the quarantine is counted again with what became of it then.",
                &["mailbox", "outcome"],
            ),
            ingest_stage_seconds: {
                let c = CounterVec::new(
                    Opts::new(
                        "switchboard_ingest_stage_seconds_total",
                        "Seconds mailbox workers spent per ingestion stage: fetch, prepare, sources, commit, wait, after (stages overlap).",
                    ),
                    &["stage"],
                )
                .expect("a valid metric name");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            time_to_offer,
            time_to_accept,
            registry,
        }
    }

    /// Counts what became of the mail of one committed batch of `mailbox`
    /// (`switchboard_ingest_mail_total`), as `(outcome, count)` pairs.
    pub fn ingest_outcomes<'a>(
        &self,
        mailbox: &str,
        outcomes: impl IntoIterator<Item = (&'a str, usize)>,
    ) {
        for (outcome, n) in outcomes {
            self.ingest_mail
                .with_label_values(&[mailbox, outcome])
                .inc_by(n as u64);
        }
    }

    /// Adds the time since `since` to the ingestion `stage`.
    pub fn ingest_stage(&self, stage: &str, since: std::time::Instant) {
        self.ingest_stage_seconds
            .with_label_values(&[stage])
            .inc_by(since.elapsed().as_secs_f64());
    }

    /// One reply sending attempt ended with `result`.
    pub fn reply_attempt(&self, result: &str) {
        self.replies.with_label_values(&[result]).inc();
    }

    /// Counts `n` offers that ended with `result`.
    pub fn offer_result(&self, result: &str, n: usize) {
        self.offer_results
            .with_label_values(&[result])
            .inc_by(n as u64);
    }

    /// The text exposition of this process's metrics and of `extra`
    /// (gauges read at scrape time).
    pub fn render(&self, extra: &[Box<dyn Collector>]) -> String {
        let mut families: Vec<MetricFamily> = self.registry.gather();
        for c in extra {
            // A family without series (no labels set) is refused by the encoder.
            families.extend(
                c.collect()
                    .into_iter()
                    .filter(|f| !f.get_metric().is_empty()),
            );
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_extra_gauges() {
        let m = Metrics::new();
        m.tasks_created
            .with_label_values(&["support", "email", "mail"])
            .inc_by(7);
        m.time_to_offer.with_label_values(&["im"]).observe(0.02);
        m.offer_result("rona", 2);
        let g = prometheus::IntGaugeVec::new(
            Opts::new("switchboard_queue_depth", "Tasks waiting."),
            &["service", "modality"],
        )
        .unwrap();
        g.with_label_values(&["support", "email"]).set(3);
        let empty =
            prometheus::IntGaugeVec::new(Opts::new("switchboard_empty", "None."), &["x"]).unwrap();
        let text = m.render(&[Box::new(empty), Box::new(g)]);
        assert!(
            text.contains(
                r#"switchboard_tasks_created_total{modality="email",service="support",source="mail"} 7"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"switchboard_time_to_offer_seconds_bucket{modality="im",le="0.025"} 1"#
            )
        );
        assert!(text.contains(r#"switchboard_offer_results_total{result="rona"} 2"#));
        assert!(text.contains(r#"switchboard_queue_depth{modality="email",service="support"} 3"#));
    }
}
