//! Startup: builds the application from its configuration and runs it until
//! shutdown. Tests use [`Running`] to start a real instance on a free port.
use crate::config::Config;
use crate::domain::service::{Service, ServiceSettings};
use crate::domain::token::hash_token;
use crate::http::{self, AppState, Metrics};
use crate::store::ownership::{Ownership, OwnershipSettings, default_worker_id};
use crate::store::{AgentUpsert, Capacity, Store, events};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Connects to the database and applies pending migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect_with(
        &config.database.url,
        config.database.max_connections,
        Duration::from_secs(config.database.keepalive_secs),
    )
    .await
    .with_context(|| {
        format!(
            "cannot open the database ({})",
            redact_url(&config.database.url)
        )
    })?;
    store.set_default_calling_code(config.directory.default_calling_code);
    let applied = store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    if applied > 0 {
        tracing::info!(
            applied,
            backend = store.backend().as_str(),
            "database migrated"
        );
    }
    Ok(store)
}

/// How this process owns its sources (mailboxes): its worker id and checks.
pub fn ownership_settings(config: &Config) -> OwnershipSettings {
    OwnershipSettings {
        check_interval: Duration::from_millis(config.database.ownership_check_ms),
        dead_after: Duration::from_secs(config.database.keepalive_secs),
        ..OwnershipSettings::new(
            config
                .ingest
                .worker_id
                .clone()
                .unwrap_or_else(default_worker_id),
        )
    }
}

/// The database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Applies the services and agents declared in the configuration (idempotent).
pub async fn apply_directory(store: &Store, config: &Config) -> anyhow::Result<()> {
    for s in &config.services {
        let settings = ServiceSettings {
            priority: s.priority,
            codes_enabled: s.codes_enabled,
            context_links: s.context_links.clone(),
            keep_context_days: s.keep_context_days,
            auto_reply_policy: s.auto_reply_policy.clone(),
            conclude_on_send: s.conclude_on_send,
            ..s.routing_settings()
        };
        let service = Service {
            id: s.id.clone(),
            name: s.name.clone(),
            email_addresses: s.own_addresses(),
            settings,
            codes: Vec::new(),
        };
        store
            .upsert_service(&service, Some(&s.codes))
            .await
            .with_context(|| format!("cannot apply service '{}'", s.id))?;
    }
    for a in &config.agents {
        let capacity = agent_capacity(config, a);
        let upsert = AgentUpsert {
            id: a.id.clone(),
            name: a.name.clone(),
            email: a.email.clone(),
            token_hash: a.resolved_token.as_ref().map(|t| hash_token(t.expose())),
            admin: a.admin,
            supervisor: a.supervisor,
            capacity,
            services: a.services.clone(),
        };
        store
            .upsert_agent(&upsert)
            .await
            .with_context(|| format!("cannot apply agent '{}'", a.id))?;
    }
    Ok(())
}

/// An agent's capacity: their own per modality, else the smallest default of
/// the services they serve that set one, else the global default.
fn agent_capacity(config: &Config, agent: &crate::config::AgentConfig) -> Capacity {
    Capacity::or_default(
        agent.capacity.or_smallest_of(
            config
                .services
                .iter()
                .filter(|s| agent.services.contains(&s.id))
                .map(|s| &s.capacity),
        ),
    )
}

/// A running instance: the HTTP server (and, as they arrive, the workers).
pub struct Running {
    pub addr: SocketAddr,
    pub store: Store,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    ingestion: JoinHandle<()>,
    ownership: Ownership,
    outbox: Option<JoinHandle<()>>,
    routing: JoinHandle<()>,
    /// Chat intake (Matrix and JetStream channels).
    chat: JoinHandle<()>,
    /// The agent-event notification forwarder and the pruner.
    events: Vec<JoinHandle<()>>,
    /// The webhook deliverer (and its listener) and the retention job.
    context: Vec<JoinHandle<()>>,
    /// What a reloaded configuration changes while running.
    reloadable: Reloadable,
}

/// The parts of the HTTP state a reloaded configuration changes.
struct Reloadable {
    details: Arc<crate::http::details::DetailsState>,
    tokens: Arc<crate::http::auth::TokenCache>,
}

impl Running {
    /// Opens the store, applies the configuration, binds `config.http.bind`
    /// (port 0 picks a free port) and starts serving.
    pub async fn start(config: &Config) -> anyhow::Result<Running> {
        // One worker id for every engine of this process (sources, outbox,
        // webhooks, retention), as `/ops` and the logs name it.
        let mut config = config.clone();
        config
            .ingest
            .worker_id
            .get_or_insert_with(default_worker_id);
        let config = &config;
        // The address first: a port in use is told before the database is
        // created or migrated.
        let listener = tokio::net::TcpListener::bind(&config.http.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.http.bind))?
            .into_std()?;
        // The port answers `starting` until the server below takes over.
        let starting = http::starting::Starting::serve(tokio::net::TcpListener::from_std(
            listener.try_clone()?,
        )?);
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let store = open_store(config).await?;
        // First: on SQLite a second process on the same file stops here.
        let ownership = Ownership::start(&store, ownership_settings(config)).await?;
        if config.ingest.lease_secs.is_some() {
            tracing::warn!(
                "ingest.lease_secs is no longer used: a dead worker's mailboxes are taken over as soon as its database connection ends"
            );
        }
        apply_directory(&store, config).await?;
        let addr = listener.local_addr()?;
        let (shutdown, mut rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let state = AppState::new(crate::http::Shared {
            store: store.clone(),
            metrics: metrics.clone(),
            ingest_limits: crate::ingest::prepare::MailLimits {
                max_message_bytes: config.ingest.max_message_bytes,
                parse_timeout: std::time::Duration::from_secs(config.ingest.parse_timeout_secs),
            },
            link_key: Arc::new(
                store
                    .link_key()
                    .await
                    .context("cannot read the link signing key")?,
            ),
            preview: config.preview.clone(),
            images: crate::image_proxy::ImageFetcher::new(crate::image_proxy::ImageProxyConfig {
                max_bytes: config.preview.image_max_bytes,
                timeout: std::time::Duration::from_secs(config.preview.image_timeout_secs),
                allow_loopback: config.preview.allow_loopback_images,
                ..Default::default()
            })
            .map_err(|e| anyhow::anyhow!("cannot build the image proxy: {e}"))?,
            outbox: Arc::new(tokio::sync::Notify::new()),
            can_send: config.smtp.is_some(),
            tokens: Arc::new(crate::http::auth::TokenCache::default()),
            shutdown: rx.clone(),
            event_streams: Arc::new(crate::http::events::OpenStreams::default()),
            web: Arc::new(crate::http::web_auth::WebAuth::new(
                config.http.public_url.as_deref(),
            )),
            routing: config.routing.clone(),
            details: Arc::new(crate::http::details::DetailsState::from_config(config)),
            chat: Arc::new(crate::chat::ChatRuntime::new(&store, config)),
            mailboxes: Arc::new(
                config
                    .mailboxes
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (config.mailbox_id(i), m.clone()))
                    .collect(),
            ),
            imap_timeout: std::time::Duration::from_secs(config.ingest.io_timeout_secs),
        });
        let events = vec![
            tokio::spawn(events::forward_notifications(
                store.clone(),
                config.database.url.clone(),
                rx.clone(),
            )),
            tokio::spawn(events::prune_periodically(store.clone(), rx.clone())),
        ];
        let ingestion = crate::ingest::worker::start(
            store.clone(),
            ownership.clone(),
            config,
            metrics.clone(),
            rx.clone(),
        )
        .await?;
        let chat = crate::chat::start(
            store.clone(),
            ownership.clone(),
            config,
            metrics.clone(),
            rx.clone(),
        )
        .await?;
        let outbox = crate::outbox::start(
            store.clone(),
            config,
            state.outbox.clone(),
            metrics.clone(),
            rx.clone(),
        )?;
        let routing = crate::routing::start(
            store.clone(),
            config.routing.clone(),
            metrics.clone(),
            rx.clone(),
        );
        let mut context =
            crate::webhooks::start(store.clone(), config, metrics.clone(), rx.clone())?;
        context.push(crate::retention::start(store.clone(), config, rx.clone()));
        let reloadable = Reloadable {
            details: state.details.clone(),
            tokens: state.tokens.clone(),
        };
        let app = http::router(state);
        starting.stop().await;
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
        });
        tracing::info!(%addr, backend = store.backend().as_str(), "switchboard is serving");
        Ok(Running {
            addr,
            store,
            shutdown,
            server,
            ingestion,
            ownership,
            outbox,
            routing,
            chat,
            events,
            context,
            reloadable,
        })
    }

    /// Applies a configuration read again (SIGHUP): the services, the agents
    /// (their tokens too) and the integrations (a token no longer configured
    /// stops working at once). Every other section takes effect at the next
    /// start.
    pub async fn reload(&self, config: &Config) -> anyhow::Result<()> {
        let applied = apply_directory(&self.store, config).await;
        // In memory, whatever became of the directory: it cannot fail.
        let integrations = self.reloadable.details.integrations.reload(config);
        // Agents' tokens are cached for a few seconds: not past a reload.
        self.reloadable.tokens.clear();
        applied.context(
            "partly applied: the integrations are, the services and agents up to the one named",
        )?;
        tracing::info!(
            services = config.services.len(),
            agents = config.agents.len(),
            integrations,
            "configuration reloaded: services, agents and integrations applied; other sections take effect at the next start"
        );
        Ok(())
    }

    /// Runs until SIGINT or SIGTERM, as [`Running::run_until_signal`]; on
    /// SIGHUP (listened for since `hangups` was made) reads the configuration again with `reread` and applies it
    /// ([`Running::reload`]). A configuration that does not load is
    /// reported and the running one kept; one that fails midway (the
    /// database) is reported with what was applied.
    pub async fn run_until_signal_reloading(
        self,
        hangups: Hangups,
        reread: impl Fn() -> anyhow::Result<Config>,
    ) -> anyhow::Result<()> {
        #[cfg(unix)]
        let mut hangup = hangups.0;
        #[cfg(not(unix))]
        let _ = hangups;
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            #[cfg(unix)]
            let reload = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let reload = std::future::pending::<Option<()>>();
            tokio::select! {
                () = &mut stop => break,
                Some(()) = reload => {
                    tracing::info!("SIGHUP: reading the configuration again");
                    match reread() {
                        Ok(config) => {
                            if let Err(e) = self.reload(&config).await {
                                tracing::error!(error = format!("{e:#}"), "the configuration was read but not all of it applied");
                            }
                        }
                        Err(e) => tracing::error!(error = format!("{e:#}"), "the configuration does not load; the running one stays"),
                    }
                }
            }
        }
        tracing::info!("shutting down: finishing in-flight requests");
        self.stop().await?;
        tracing::info!("stopped");
        Ok(())
    }

    /// The base URL, e.g. `http://127.0.0.1:8080`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests and mailbox batches finish
    /// (an interrupted batch is simply not committed), releases the mailboxes
    /// it owns and closes the database.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        // In-flight requests get a while to finish; a client that stopped
        // reading (a stalled event stream) cannot hold the shutdown forever.
        let mut server = self.server;
        match tokio::time::timeout(std::time::Duration::from_secs(15), &mut server).await {
            Ok(done) => done.context("server task failed")??,
            Err(_) => {
                tracing::warn!("connections still open after 15 s; closing them");
                server.abort();
            }
        }
        self.ingestion.await.context("ingestion task failed")?;
        self.routing.await.context("routing task failed")?;
        self.chat.await.context("chat task failed")?;
        self.ownership.close().await;
        if let Some(outbox) = self.outbox {
            outbox.await.context("outbox task failed")?;
        }
        for task in self.events {
            task.await.context("event task failed")?;
        }
        for task in self.context {
            task.await.context("webhook or retention task failed")?;
        }
        self.store.close().await;
        Ok(())
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        self.stop().await?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// SIGHUP, listened for from the moment this is made: made before the
/// server starts answering, so that a reload asked for at once is a reload,
/// not the signal's default action (the end of the process).
pub struct Hangups(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangups {
    pub fn listen() -> Hangups {
        Hangups(
            #[cfg(unix)]
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        )
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
