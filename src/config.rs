//! Configuration: TOML, every key overridable from the environment, secrets from
//! `*_env` / `*_file`. [`Config::load`] reads and resolves; [`Config::problems`]
//! lists every mistake with the key it concerns, so `check-config` and `serve`
//! say the same thing. The configuration is plain data: the adapters turn it
//! into live objects and add their own checks ([`Config::load_checked`]).
use crate::domain::id::validate_slug;
use crate::domain::token::MIN_TOKEN_LEN;
use crate::domain::wrapup::CatalogCode;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// How a connection to a mail server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain TCP (loopback and tests only).
    None,
    /// Plain TCP upgraded with STARTTLS before authenticating.
    #[default]
    Starttls,
    /// TLS from the first byte (IMAPS 993, SMTPS 465).
    Implicit,
}

/// How outgoing mail is DKIM-signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    /// RSA-SHA256 (RFC 6376), what every verifier knows.
    #[default]
    Rsa,
    /// Ed25519-SHA256 (RFC 8463): small keys, fast; not every verifier has it yet.
    Ed25519,
}

impl fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DkimAlgorithm::Rsa => "rsa",
            DkimAlgorithm::Ed25519 => "ed25519",
        })
    }
}

/// A secret value: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Read from the configuration as a string. Any other type is refused
/// without echoing the value (an unquoted numeric password would otherwise
/// appear in the error).
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SecretText;
        impl serde::de::Visitor<'_> for SecretText {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (put the secret in quotes)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string: put it in quotes"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string: put it in quotes"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string: put it in quotes"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string: put it in quotes"))
            }
        }
        d.deserialize_string(SecretText)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
    #[serde(default)]
    pub mailboxes: Vec<MailboxConfig>,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub preview: PreviewConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    pub smtp: Option<SmtpConfig>,
    /// Systems that read and update tasks (the "Update task" action) with a token of their own.
    #[serde(default)]
    pub integrations: Vec<IntegrationConfig>,
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    #[serde(default)]
    pub context: ContextConfig,
    #[serde(default)]
    pub directory: DirectoryConfig,
    /// Instant messaging: handles and intake settings.
    #[serde(default)]
    pub chat: ChatConfig,
    /// Chat channels that feed services with IM tasks.
    #[serde(default)]
    pub chat_channels: Vec<ChatChannelConfig>,
}

/// The scopes an integration token can have.
pub const INTEGRATION_SCOPES: &[&str] = &["tasks:read", "tasks:write", "contacts:read"];

/// An integration (e.g. a CRM connector): reads tasks and updates their
/// customer and custom parameters, nothing else.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationConfig {
    pub id: String,
    pub name: Option<String>,
    pub token: Option<Secret>,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// What it may do: `tasks:read`, `tasks:write`, `contacts:read`
    /// (default: read and update tasks).
    #[serde(default = "default_integration_scopes")]
    pub scopes: Vec<String>,
    #[serde(skip)]
    pub resolved_token: Option<Secret>,
}

fn default_integration_scopes() -> Vec<String> {
    vec!["tasks:read".into(), "tasks:write".into()]
}

/// Outbound webhooks: how deliveries are made and retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Lets subscriptions point at loopback addresses. Tests only: never in production.
    pub allow_loopback: bool,
    /// Budget of one delivery attempt (connect, send, answer).
    pub timeout_secs: u64,
    /// Wait after the first failed attempt; doubled after each further one.
    pub retry_base_ms: u64,
    /// Longest wait between two attempts.
    pub retry_max_delay_secs: u64,
    /// A delivery failing for this long is dead-lettered (operators can redeliver it).
    pub retry_for_secs: u64,
    /// Deliveries in flight at once per worker.
    pub max_in_flight: usize,
    /// How often every worker looks for due deliveries without being woken.
    pub sweep_ms: u64,
    /// Delivered (and dead) deliveries are deleted after this many days.
    pub keep_days: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            allow_loopback: false,
            timeout_secs: 10,
            retry_base_ms: 5_000,
            retry_max_delay_secs: 3_600,
            retry_for_secs: 86_400,
            max_in_flight: 64,
            sweep_ms: 1_000,
            keep_days: 7,
        }
    }
}

/// Instant messaging settings shared by every chat channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatConfig {
    /// How long an open-chat handle stays valid (at most a day).
    pub handle_ttl_secs: u64,
    /// Delivered event ids are remembered this long: a repeated delivery
    /// within it has no second effect.
    pub event_retention_days: u64,
    /// Matrix: how long one `/sync` long-poll waits for news.
    pub matrix_sync_timeout_ms: u64,
    /// How often room membership (the Matrix handoff) is checked even
    /// without a change being announced.
    pub membership_sweep_ms: u64,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            handle_ttl_secs: 900,
            event_retention_days: 7,
            matrix_sync_timeout_ms: 30_000,
            membership_sweep_ms: 5_000,
        }
    }
}

/// Where a chat channel's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatChannelKind {
    /// Signed JSON events posted to `POST /api/v1/chat/events`.
    Webhook,
    /// A bot account on a Matrix homeserver, pulled with `/sync`.
    Matrix,
    /// The webhook's JSON events from a NATS JetStream stream.
    Jetstream,
}

impl ChatChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatChannelKind::Webhook => "webhook",
            ChatChannelKind::Matrix => "matrix",
            ChatChannelKind::Jetstream => "jetstream",
        }
    }
}

/// Conversation context kept after sessions, and its retention job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContextConfig {
    /// How often the retention job runs (in one worker per period, whichever gets it).
    pub retention_interval_secs: u64,
    /// The length of a day of `keep_context_days`. Tests only: leave it at 86400.
    pub day_secs: u64,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            retention_interval_secs: 3_600,
            day_secs: 86_400,
        }
    }
}

/// The internal directory and address book.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// Calling code given to national phone numbers (`044 …` with 41 is
    /// `+4144…`); without it they are compared as written.
    pub default_calling_code: Option<u16>,
}

/// One chat channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatChannelConfig {
    pub id: String,
    pub service: String,
    pub kind: ChatChannelKind,
    /// The webhook's signing secret; several may be active at once while
    /// one is rotated (`secrets`, `secrets_env`, `secrets_file`).
    pub secret: Option<Secret>,
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub secrets: Vec<Secret>,
    #[serde(default)]
    pub secrets_env: Vec<String>,
    #[serde(default)]
    pub secrets_file: Vec<PathBuf>,
    /// Where an open-chat handle leads: `{chat_id}` (`{room_id}`),
    /// `{agent_id}`, `{agent_upn}`, `{agent_matrix_user_id}`.
    pub chat_url_template: Option<String>,
    /// Matrix: the homeserver's client-server API base URL.
    pub homeserver_url: Option<String>,
    /// Matrix: the service's bot account, e.g. `@support:example.org`.
    pub user_id: Option<String>,
    pub access_token: Option<Secret>,
    pub access_token_env: Option<String>,
    pub access_token_file: Option<PathBuf>,
    /// JetStream: the NATS server (default `nats://127.0.0.1:4222`).
    pub url: Option<String>,
    pub stream: Option<String>,
    /// JetStream: the subject filter of the consumer.
    pub subject: Option<String>,
    /// JetStream: the durable consumer every worker shares (default `switchboard-<id>`).
    pub durable: Option<String>,
    /// Relay what agents write on the task page into the chat (off by
    /// default: agents answer in the chat system through the handle).
    #[serde(default)]
    pub relay: bool,
    /// Webhook channels with relay: where replies are posted, signed like
    /// incoming events (with the last of the channel's secrets).
    pub reply_url: Option<String>,
    #[serde(skip)]
    pub resolved_secrets: Vec<Secret>,
    #[serde(skip)]
    pub resolved_access_token: Option<Secret>,
}

impl ChatChannelConfig {
    /// The URL template of handles (Matrix rooms open on matrix.to by default).
    pub fn url_template(&self) -> Option<String> {
        self.chat_url_template.clone().or_else(|| {
            (self.kind == ChatChannelKind::Matrix).then(|| "https://matrix.to/#/{room_id}".into())
        })
    }

    /// The durable consumer's name.
    pub fn durable_name(&self) -> String {
        self.durable
            .clone()
            .unwrap_or_else(|| format!("switchboard-{}", self.id))
    }
}

/// How tasks are offered to agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// An agent with no open event stream and no presence call for this long
    /// is treated as offline, and offers pending to them return to the queue.
    pub presence_grace_secs: u64,
    /// How often every worker looks for work even without being woken.
    pub sweep_ms: u64,
}

impl RoutingConfig {
    /// The presence grace period in milliseconds.
    pub fn grace_ms(&self) -> i64 {
        i64::try_from(self.presence_grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            presence_grace_secs: 60,
            sweep_ms: 1000,
        }
    }
}

/// How email previews are rendered and remote images fetched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreviewConfig {
    /// A body that takes longer to sanitize is shown as text with a notice.
    pub render_budget_ms: u64,
    /// How long the signed links handed to browsers stay valid.
    pub link_ttl_secs: u64,
    /// Largest inline `data:image/*` kept in a preview.
    pub max_data_image_bytes: usize,
    /// Largest remote image the image proxy fetches.
    pub image_max_bytes: usize,
    pub image_timeout_secs: u64,
    /// Lets the image proxy fetch from loopback addresses (tests only).
    pub allow_loopback_images: bool,
}

impl Default for PreviewConfig {
    fn default() -> Self {
        PreviewConfig {
            render_budget_ms: 2000,
            link_ttl_secs: 900,
            max_data_image_bytes: 128 * 1024,
            image_max_bytes: 5 * 1024 * 1024,
            image_timeout_secs: 10,
            allow_loopback_images: false,
        }
    }
}

/// How mailboxes are synced.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Larger messages go to the quarantine (and stay on the server).
    pub max_message_bytes: u64,
    /// Polling interval where IMAP IDLE is missing.
    pub poll_interval_secs: u64,
    /// How often a local Maildir is scanned.
    pub maildir_scan_ms: u64,
    /// A file written straight into a Maildir's `new/` (not renamed from
    /// `tmp/`) is taken once it has not changed for this long.
    pub maildir_settle_ms: u64,
    /// IDLE is re-issued after this long, well before the 29-minute limit.
    pub idle_renew_secs: u64,
    /// Messages per transaction.
    pub batch_size: usize,
    /// Bytes of mail held in memory per transaction (one larger message still fits).
    pub batch_bytes: u64,
    /// A message whose parsing takes longer goes to the quarantine.
    pub parse_timeout_secs: u64,
    /// Read timeout under every IMAP command.
    pub io_timeout_secs: u64,
    /// No longer used (ownership follows the owner's database connection);
    /// accepted so that older files still load.
    pub lease_secs: Option<u64>,
    /// Longest wait between reconnection attempts.
    pub max_backoff_secs: u64,
    /// This worker's name in leases (default: host name and process id).
    pub worker_id: Option<String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_message_bytes: 50 * 1024 * 1024,
            poll_interval_secs: 60,
            maildir_scan_ms: 1000,
            maildir_settle_ms: 1000,
            idle_renew_secs: 600,
            batch_size: 50,
            batch_bytes: 32 * 1024 * 1024,
            parse_timeout_secs: 20,
            io_timeout_secs: 60,
            lease_secs: None,
            max_backoff_secs: 300,
            worker_id: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(default = "default_db_url")]
    pub url: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// PostgreSQL: a connection whose peer vanished (a worker's host lost
    /// power or network) is dropped within about this long (TCP keepalives),
    /// freeing what it held; a worker whose ownership connection does not
    /// answer within it stops the sources it owned.
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: u64,
    /// How often a worker checks its ownership connection and looks for
    /// sources (mailboxes) whose owner died.
    #[serde(default = "default_ownership_check_ms")]
    pub ownership_check_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: default_db_url(),
            max_connections: default_max_connections(),
            keepalive_secs: default_keepalive_secs(),
            ownership_check_ms: default_ownership_check_ms(),
        }
    }
}

fn default_db_url() -> String {
    "sqlite://data/switchboard.db".into()
}
fn default_max_connections() -> u32 {
    16
}
fn default_keepalive_secs() -> u64 {
    5
}
fn default_ownership_check_ms() -> u64 {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_bind")]
    pub bind: String,
    /// The address agents reach us at, for links we hand out.
    pub public_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: default_bind(),
            public_url: None,
        }
    }
}

fn default_bind() -> String {
    "127.0.0.1:8080".into()
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `switchboard=debug` (RUST_LOG wins when set).
    pub level: Option<String>,
    /// `text` (default) or `json`.
    pub format: Option<String>,
}

/// A context item of a service: `label`, `url_template`, `embed`, `kind`
/// (`link` or `map`) and `when_missing` (`omit` or `empty`).
pub type ContextLinkConfig = crate::domain::context::ContextLink;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub id: String,
    pub name: String,
    /// The service's own address; never a reply recipient.
    pub email_address: Option<String>,
    /// More own addresses (aliases).
    #[serde(default)]
    pub email_addresses: Vec<String>,
    #[serde(default)]
    pub priority: i32,
    /// Seconds an offer waits for an answer: one number, or per modality.
    #[serde(default)]
    pub rona_timeout_secs: crate::domain::service::RonaTimeouts,
    /// `longest_idle` (default), `broadcast` or `pickup`.
    #[serde(default)]
    pub distribution: crate::domain::routing::Distribution,
    #[serde(default = "default_broadcast_size")]
    pub broadcast_size: u32,
    #[serde(default = "default_rona_reset_secs")]
    pub rona_reset_secs: u32,
    pub max_ronas: Option<u32>,
    pub overflow_service: Option<String>,
    /// Capacity of member agents who do not set their own.
    #[serde(default)]
    pub capacity: Capacity,
    #[serde(default = "default_true")]
    pub codes_enabled: bool,
    #[serde(default)]
    pub codes: Vec<CatalogCode>,
    #[serde(default)]
    pub context_links: Vec<ContextLinkConfig>,
    /// Days to keep conversation context after the session (0 = delete at once, at most 30).
    #[serde(default)]
    pub keep_context_days: u32,
    /// What to do with auto-replies and bounces: `drop`, `attach` or `queue`.
    #[serde(default = "default_auto_reply_policy")]
    pub auto_reply_policy: String,
    /// Sending a reply concludes the agent's part, as if marked handled.
    #[serde(default)]
    pub conclude_on_send: bool,
}

fn default_true() -> bool {
    true
}
fn default_broadcast_size() -> u32 {
    crate::domain::service::DEFAULT_BROADCAST_SIZE
}
fn default_rona_reset_secs() -> u32 {
    crate::domain::service::DEFAULT_RONA_RESET_SECS
}
fn default_auto_reply_policy() -> String {
    "attach".into()
}

/// Capacity per modality, where set (an agent's own, or a service's
/// default for its agents).
pub type Capacity = crate::domain::service::CapacityDefaults;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub id: String,
    pub name: String,
    pub email: String,
    pub token: Option<Secret>,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub admin: bool,
    /// Also reads the work of their own services (tasks, queues, agents).
    #[serde(default)]
    pub supervisor: bool,
    #[serde(default)]
    pub capacity: Capacity,
    /// The agent's Matrix account, invited into a room when they take its chat.
    pub matrix_user_id: Option<String>,
    #[serde(skip)]
    pub resolved_token: Option<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailboxKind {
    Imap,
    Maildir,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxConfig {
    /// Stable name of the mailbox; defaults to `<service>-<n>`.
    pub id: Option<String>,
    pub service: String,
    pub kind: MailboxKind,
    pub host: Option<String>,
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: TlsMode,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Use XOAUTH2 with the password as the access token.
    #[serde(default)]
    pub xoauth2: bool,
    /// XOAUTH2: a command whose output is a fresh access token (run at each connection).
    pub token_command: Option<String>,
    /// PEM certificates to trust besides the public roots (a private CA).
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_folder")]
    pub folder: String,
    #[serde(default = "default_after_ingest")]
    pub after_ingest: String,
    /// Where sent replies are appended (IMAP), so the shared mailbox shows the
    /// whole conversation; also checked before a reply is ever sent twice.
    pub sent_folder: Option<String>,
    /// Maildir root (for `kind = "maildir"`).
    pub path: Option<PathBuf>,
    #[serde(skip)]
    pub resolved_password: Option<Secret>,
}

fn default_folder() -> String {
    "INBOX".into()
}
fn default_after_ingest() -> String {
    "seen".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// The SMTP server; or give `file` instead to write outgoing mail as `.eml` files.
    pub host: Option<String>,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    #[serde(default)]
    pub tls: TlsMode,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Use XOAUTH2 with the password as the access token.
    #[serde(default)]
    pub xoauth2: bool,
    /// A command that prints an XOAUTH2 access token, run for every new
    /// connection (implies `xoauth2`).
    pub token_command: Option<String>,
    /// PEM certificates to trust besides the public roots.
    pub ca_file: Option<PathBuf>,
    /// Write outgoing mail into this folder as `.eml` files instead of sending it (the demo).
    pub file: Option<PathBuf>,
    #[serde(default = "default_smtp_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_smtp_pool")]
    pub pool_max: u32,
    /// First retry delay after a temporary failure; doubles each time, capped at an hour.
    #[serde(default = "default_retry_base")]
    pub retry_base_secs: u64,
    /// Attempts before a reply that keeps failing temporarily is marked failed.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// DKIM: the signing domain (`d=`), e.g. `example.com`. Signing is on when
    /// a key is given.
    pub dkim_domain: Option<String>,
    /// DKIM: the selector (`s=`); the public key is the TXT record at
    /// `<selector>._domainkey.<domain>`.
    pub dkim_selector: Option<String>,
    /// DKIM private key (PEM) inline, from an environment variable, or a file.
    pub dkim_key: Option<Secret>,
    pub dkim_key_env: Option<String>,
    pub dkim_key_file: Option<PathBuf>,
    /// `rsa` (default) or `ed25519`.
    #[serde(default)]
    pub dkim_algorithm: DkimAlgorithm,
    #[serde(skip)]
    pub resolved_password: Option<Secret>,
    #[serde(skip)]
    pub resolved_dkim_key: Option<Secret>,
}

impl SmtpConfig {
    /// Whether any DKIM key source is given.
    pub fn dkim_key_given(&self) -> bool {
        self.dkim_key.is_some() || self.dkim_key_env.is_some() || self.dkim_key_file.is_some()
    }

    /// The key that names where the DKIM key came from, for messages.
    pub fn dkim_key_name(&self) -> &'static str {
        if self.dkim_key_file.is_some() {
            "smtp.dkim_key_file"
        } else if self.dkim_key_env.is_some() {
            "smtp.dkim_key_env"
        } else {
            "smtp.dkim_key"
        }
    }
}

fn default_smtp_timeout() -> u64 {
    30
}
fn default_smtp_pool() -> u32 {
    4
}
fn default_retry_base() -> u64 {
    30
}
fn default_max_attempts() -> u32 {
    12
}

fn default_smtp_port() -> u16 {
    587
}

/// One mistake in the configuration: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("configuration has {} problem(s):\n  {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<Problem>),
}

/// A TOML syntax error by its line and column, without quoting the line
/// (toml's own text does): the line may hold a secret, and the message may
/// go to a log (a reload on SIGHUP).
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {}", e.message().trim())
        }
        None => e.message().trim().to_string(),
    }
}

/// A serde message in plain words: no Rust type names (`expected i32` is
/// `expected a whole number from -2147483648 to 2147483647`), TOML's names
/// for lists and tables. The API's wording, so both say the same.
fn plain_words(message: &str) -> String {
    crate::domain::serde_words::tidy_serde_message(message)
        .replace("an object", "a table")
        .replace("expected a boolean", "expected true or false")
        .replace("invalid type: boolean", "invalid type: true/false")
}

/// Whether a key (`chat_channels.secrets`) holds a secret.
fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    matches!(
        last,
        "token" | "secret" | "secrets" | "access_token" | "password" | "dkim_key"
    )
}

/// `invalid type: string "s3cret", expected a list` as `a value of the
/// wrong type (not shown), expected a list`: what serde quotes of the value
/// (a string, with its own quotes escaped, a number in backticks) is cut
/// out whole; a message of another shape quotes no value and stays.
fn without_value(message: &str) -> String {
    const HIDDEN: &str = "a value of the wrong type (not shown)";
    let start = ["invalid type: ", "invalid value: ", "invalid length "]
        .iter()
        .filter_map(|p| message.find(p))
        .min();
    match start {
        Some(i) => match message[i..].rfind(", expected ") {
            Some(j) => format!("{}{HIDDEN}{}", &message[..i], &message[i + j..]),
            None => format!("{}{HIDDEN}", &message[..i]),
        },
        // Not serde's quoting of a value: a message of ours (`a secret must
        // be a string: put it in quotes`), which quotes none.
        None => message.to_string(),
    }
}

/// `services.priority` as `services[1].priority`: the item of a list whose
/// deserialization fails on its own is the one the mistake is in (serde
/// reads a list in order and stops at the first).
fn indexed_key(table: &toml::Table, key: &str) -> String {
    let (section, rest) = match key.split_once('.') {
        Some((section, rest)) => (section, format!(".{rest}")),
        None => (key, String::new()),
    };
    if let Some(toml::Value::Array(items)) = table.get(section) {
        for (i, item) in items.iter().enumerate() {
            let mut one = toml::Table::new();
            one.insert(section.into(), toml::Value::Array(vec![item.clone()]));
            if Config::deserialize(one).is_err() {
                return format!("{section}[{i}]{rest}");
            }
        }
    }
    key.into()
}

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

impl Config {
    /// Reads `path` (a missing file is an empty configuration unless `required`),
    /// applies `SWITCHBOARD_*` overrides, resolves secrets and validates.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        Config::load_checked(path, required, |_| Vec::new())
    }

    /// Like [`Config::load`], adding the problems `check` finds (the adapters'
    /// own checks, e.g. a DKIM key that is not one): every problem is reported
    /// at once.
    pub fn load_checked(
        path: &Path,
        required: bool,
        check: impl Fn(&Config) -> Vec<Problem>,
    ) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let env: Vec<(String, String)> = std::env::vars().collect();
        Config::from_parts_checked(&text, path, &env, check)
    }

    /// Like [`Config::load`], from text and an explicit environment (for tests).
    pub fn from_parts(
        text: &str,
        path: &Path,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        Config::from_parts_checked(text, path, env, |_| Vec::new())
    }

    /// Like [`Config::load_checked`], from text and an explicit environment.
    pub fn from_parts_checked(
        text: &str,
        path: &Path,
        env: &[(String, String)],
        check: impl Fn(&Config) -> Vec<Problem>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message: syntax_message(text, &e),
                })?;
        apply_env_overrides(&mut value, env)?;
        let mut config: Config = Config::deserialize(value.clone()).map_err(|e| {
            // `invalid type: …\nin `services.priority``: the mistake and its key.
            let told = e.to_string();
            let (mistake, key) = match told.trim().rsplit_once("\nin `") {
                Some((mistake, key)) => (mistake.trim(), Some(key.trim_end_matches('`'))),
                None => (told.trim(), None),
            };
            let key_note = key
                .map(|k| format!(" (key {})", indexed_key(&value, k)))
                .unwrap_or_default();
            // The same mistake read from the text has a line and column; a
            // mistake the text does not make came from the environment.
            let from_env = env.iter().any(|(k, _)| k.starts_with(ENV_PREFIX));
            let message = match toml::from_str::<Config>(text) {
                Err(in_text) if in_text.message().trim() == mistake || !from_env => {
                    format!("{}{key_note}", syntax_message(text, &in_text))
                }
                _ if from_env => {
                    format!("{mistake}{key_note}, set by a {ENV_PREFIX}* environment variable")
                }
                _ => format!("{mistake}{key_note}"),
            };
            // A secret's value is never shown, even one of the wrong type.
            let message = match key {
                Some(k) if is_secret_key(k) => without_value(&message),
                _ => message,
            };
            ConfigError::Syntax {
                path: path.to_path_buf(),
                message: plain_words(&message),
            }
        })?;
        let mut problems = config.resolve_secrets(env);
        problems.extend(config.problems());
        problems.extend(check(&config));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    fn resolve_secrets(&mut self, env: &[(String, String)]) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (i, a) in self.agents.iter_mut().enumerate() {
            match resolve_secret(
                &format!("agents[{i}].token"),
                &a.token,
                &a.token_env,
                &a.token_file,
                env,
            ) {
                Ok(s) => a.resolved_token = s,
                Err(p) => problems.push(p),
            }
        }
        for (i, m) in self.mailboxes.iter_mut().enumerate() {
            match resolve_secret(
                &format!("mailboxes[{i}].password"),
                &m.password,
                &m.password_env,
                &m.password_file,
                env,
            ) {
                Ok(s) => m.resolved_password = s,
                Err(p) => problems.push(p),
            }
        }
        for (i, it) in self.integrations.iter_mut().enumerate() {
            match resolve_secret(
                &format!("integrations[{i}].token"),
                &it.token,
                &it.token_env,
                &it.token_file,
                env,
            ) {
                Ok(s) => it.resolved_token = s,
                Err(p) => problems.push(p),
            }
        }
        for (i, c) in self.chat_channels.iter_mut().enumerate() {
            let key = format!("chat_channels[{i}]");
            c.resolved_secrets.clear();
            match resolve_secret(
                &format!("{key}.secret"),
                &c.secret,
                &c.secret_env,
                &c.secret_file,
                env,
            ) {
                Ok(s) => c.resolved_secrets.extend(s),
                Err(p) => problems.push(p),
            }
            c.resolved_secrets.extend(c.secrets.iter().cloned());
            for (j, var) in c.secrets_env.iter().enumerate() {
                match env.iter().find(|(k, _)| k == var) {
                    Some((_, v)) if !v.is_empty() => {
                        c.resolved_secrets.push(Secret::new(v.clone()))
                    }
                    _ => problems.push(Problem {
                        key: format!("{key}.secrets_env[{j}]"),
                        message: format!("environment variable {var} is not set"),
                    }),
                }
            }
            for (j, path) in c.secrets_file.iter().enumerate() {
                match resolve_secret(
                    &format!("{key}.secrets[{j}]"),
                    &None,
                    &None,
                    &Some(path.clone()),
                    env,
                ) {
                    Ok(s) => c.resolved_secrets.extend(s),
                    Err(mut p) => {
                        p.key = format!("{key}.secrets_file[{j}]");
                        problems.push(p)
                    }
                }
            }
            match resolve_secret(
                &format!("{key}.access_token"),
                &c.access_token,
                &c.access_token_env,
                &c.access_token_file,
                env,
            ) {
                Ok(s) => c.resolved_access_token = s,
                Err(p) => problems.push(p),
            }
        }
        if let Some(smtp) = &mut self.smtp {
            match resolve_secret(
                "smtp.password",
                &smtp.password,
                &smtp.password_env,
                &smtp.password_file,
                env,
            ) {
                Ok(s) => smtp.resolved_password = s,
                Err(p) => problems.push(p),
            }
            match resolve_secret(
                "smtp.dkim_key",
                &smtp.dkim_key,
                &smtp.dkim_key_env,
                &smtp.dkim_key_file,
                env,
            ) {
                Ok(s) => smtp.resolved_dkim_key = s,
                Err(p) => problems.push(p),
            }
        }
        problems
    }

    /// Every mistake that can be found without connecting anywhere.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: String, message: String| out.push(Problem { key, message });
        if !(self.database.url.starts_with("sqlite:")
            || self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            problem(
                "database.url".into(),
                "must start with sqlite:// or postgres://".into(),
            );
        }
        if self.database.max_connections == 0 {
            problem(
                "database.max_connections".into(),
                "must be at least 1".into(),
            );
        }
        if self.http.bind.parse::<std::net::SocketAddr>().is_err() {
            problem(
                "http.bind".into(),
                format!(
                    "'{}' is not an address:port such as 127.0.0.1:8080",
                    self.http.bind
                ),
            );
        }
        if let Some(f) = &self.log.format
            && f != "text"
            && f != "json"
        {
            problem("log.format".into(), format!("'{f}' is not text or json"));
        }
        if let Some(level) = &self.log.level
            && let Some(bad) = unknown_log_directive(level)
        {
            problem(
                "log.level".into(),
                format!(
                    "'{}' is not a level: use trace, debug, info, warn, error or off, or directives such as info,switchboard=debug",
                    bad.chars().take(40).collect::<String>()
                ),
            );
        }
        let mut service_ids = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let key = format!("services[{i}]");
            if let Err(e) = validate_slug("id", &s.id) {
                problem(format!("{key}.id"), e.to_string());
            }
            if !service_ids.insert(s.id.as_str()) {
                problem(
                    format!("{key}.id"),
                    format!("duplicate service id '{}'", s.id),
                );
            }
            if s.name.trim().is_empty() {
                problem(format!("{key}.name"), "must not be empty".into());
            }
            for (j, addr) in s.own_addresses().iter().enumerate() {
                if !looks_like_email(addr) {
                    problem(
                        format!("{key}.email_address{}", if j == 0 { "" } else { "es" }),
                        format!("'{addr}' is not an email address"),
                    );
                }
            }
            if crate::domain::task::validate_priority(s.priority).is_err() {
                problem(
                    format!("{key}.priority"),
                    "must be between -100 and 100".into(),
                );
            }
            if s.keep_context_days > 30 {
                problem(
                    format!("{key}.keep_context_days"),
                    "context may be kept for at most 30 days".into(),
                );
            }
            for (field, message) in s.routing_settings().routing_problems(&s.id) {
                problem(format!("{key}.{field}"), message);
            }
            if let Some(o) = &s.overflow_service
                && !self.services.iter().any(|x| &x.id == o)
            {
                problem(
                    format!("{key}.overflow_service"),
                    format!("unknown service '{}'", crate::domain::clip(o, 64)),
                );
            }
            if s.overflow_service.is_some() && s.max_ronas.is_none() {
                problem(
                    format!("{key}.overflow_service"),
                    "set max_ronas too: how many RONAs send a task there".into(),
                );
            }
            if s.max_ronas.is_some_and(|n| n > 0) && s.overflow_service.is_none() {
                problem(
                    format!("{key}.max_ronas"),
                    "set overflow_service too: where a task goes after this many RONAs (without it there is no limit: leave max_ronas out)".into(),
                );
            }
            if !matches!(s.auto_reply_policy.as_str(), "drop" | "attach" | "queue") {
                problem(
                    format!("{key}.auto_reply_policy"),
                    format!("'{}' is not drop, attach or queue", s.auto_reply_policy),
                );
            }
            let mut codes = HashSet::new();
            for (j, c) in s.codes.iter().enumerate() {
                if let Err(e) = validate_slug("code", &c.code) {
                    problem(format!("{key}.codes[{j}].code"), e.to_string());
                }
                if !codes.insert(c.code.as_str()) {
                    problem(
                        format!("{key}.codes[{j}].code"),
                        format!("duplicate code '{}'", c.code),
                    );
                }
            }
            if let Err(e) = crate::domain::context::check_context_links(
                &s.context_links,
                &format!("{key}.context_links"),
            ) {
                let text = e.to_string();
                match text.split_once(": ") {
                    Some((k, m)) => problem(k.to_string(), m.to_string()),
                    None => problem(format!("{key}.context_links"), text),
                }
            }
        }
        let mut agent_ids = HashSet::new();
        // Who holds each token (`agents[0]`, `integrations[1]`): a token
        // names one principal only.
        let mut token_owner: BTreeMap<&str, String> = BTreeMap::new();
        for (i, a) in self.agents.iter().enumerate() {
            let key = format!("agents[{i}]");
            if let Err(e) = validate_slug("id", &a.id) {
                problem(format!("{key}.id"), e.to_string());
            }
            if !agent_ids.insert(a.id.as_str()) {
                problem(
                    format!("{key}.id"),
                    format!("duplicate agent id '{}'", a.id),
                );
            }
            if a.name.trim().is_empty() {
                problem(format!("{key}.name"), "must not be empty".into());
            }
            if !looks_like_email(&a.email) {
                problem(
                    format!("{key}.email"),
                    format!("'{}' is not an email address", a.email),
                );
            }
            for s in &a.services {
                if !service_ids.contains(s.as_str()) {
                    problem(format!("{key}.services"), format!("unknown service '{s}'"));
                }
            }
            let token_given = a.token.is_some() || a.token_env.is_some() || a.token_file.is_some();
            match &a.resolved_token {
                // A source that failed is reported where it was resolved.
                None if token_given => {}
                None => problem(
                    format!("{key}.token"),
                    "missing: set token, token_env or token_file".into(),
                ),
                Some(t) if t.expose().len() < MIN_TOKEN_LEN => problem(
                    format!("{key}.token"),
                    format!("too short: use at least {MIN_TOKEN_LEN} random characters"),
                ),
                Some(t) => {
                    if let Some(other) = token_owner.get(t.expose()) {
                        problem(
                            format!("{key}.token"),
                            format!("the same token as {other}: every agent needs its own"),
                        );
                    } else {
                        token_owner.insert(t.expose(), key.clone());
                    }
                }
            }
        }
        let mut integration_ids = HashSet::new();
        for (i, it) in self.integrations.iter().enumerate() {
            let key = format!("integrations[{i}]");
            if let Err(e) = validate_slug("id", &it.id) {
                problem(format!("{key}.id"), e.to_string());
            }
            if !integration_ids.insert(it.id.as_str()) {
                problem(
                    format!("{key}.id"),
                    format!("duplicate integration id '{}'", it.id),
                );
            }
            if it.scopes.is_empty() {
                problem(
                    format!("{key}.scopes"),
                    format!("list at least one of {}", INTEGRATION_SCOPES.join(", ")),
                );
            }
            for scope in &it.scopes {
                if !INTEGRATION_SCOPES.contains(&scope.as_str()) {
                    problem(
                        format!("{key}.scopes"),
                        format!(
                            "unknown scope '{}': use {}",
                            crate::domain::clip(scope, 40),
                            INTEGRATION_SCOPES.join(", ")
                        ),
                    );
                }
            }
            let given = it.token.is_some() || it.token_env.is_some() || it.token_file.is_some();
            match &it.resolved_token {
                None if given => {}
                None => problem(
                    format!("{key}.token"),
                    "missing: set token, token_env or token_file".into(),
                ),
                Some(t) if t.expose().len() < MIN_TOKEN_LEN => problem(
                    format!("{key}.token"),
                    format!("too short: use at least {MIN_TOKEN_LEN} random characters"),
                ),
                Some(t) => {
                    if let Some(other) = token_owner.get(t.expose()) {
                        problem(
                            format!("{key}.token"),
                            format!(
                                "the same token as {other}: every agent and integration needs its own"
                            ),
                        );
                    } else {
                        token_owner.insert(t.expose(), key.clone());
                    }
                }
            }
        }
        if let Some(code) = self.directory.default_calling_code
            && let Err(e) = crate::domain::phone::check_calling_code(code)
        {
            problem("directory.default_calling_code".into(), e);
        }
        let mut mailbox_ids = HashSet::new();
        for (i, m) in self.mailboxes.iter().enumerate() {
            let key = format!("mailboxes[{i}]");
            if !service_ids.contains(m.service.as_str()) {
                problem(
                    format!("{key}.service"),
                    format!("unknown service '{}'", m.service),
                );
            }
            let id =
                m.id.clone()
                    .unwrap_or_else(|| format!("{}-{}", m.service, i));
            if let Err(e) = validate_slug("id", &id) {
                problem(format!("{key}.id"), e.to_string());
            }
            if !mailbox_ids.insert(id.clone()) {
                problem(format!("{key}.id"), format!("duplicate mailbox id '{id}'"));
            }
            if m.after_ingest != "seen" && !m.after_ingest.starts_with("move:")
                || m.after_ingest == "move:"
            {
                problem(
                    format!("{key}.after_ingest"),
                    format!("'{}' is not \"seen\" or \"move:<Folder>\"", m.after_ingest),
                );
            }
            match m.kind {
                MailboxKind::Imap => {
                    if m.host.as_deref().is_none_or(|h| h.trim().is_empty()) {
                        problem(format!("{key}.host"), "required for an IMAP mailbox".into());
                    }
                    if m.username.is_none() {
                        problem(
                            format!("{key}.username"),
                            "required for an IMAP mailbox".into(),
                        );
                    }
                    let given = m.password.is_some()
                        || m.password_env.is_some()
                        || m.password_file.is_some();
                    if m.resolved_password.is_none() && m.token_command.is_none() && !given {
                        problem(
                            format!("{key}.password"),
                            "required for an IMAP mailbox: set password, password_env or password_file"
                                .into(),
                        );
                    }
                }
                MailboxKind::Maildir => {
                    if m.path.is_none() {
                        problem(
                            format!("{key}.path"),
                            "required for a maildir mailbox".into(),
                        );
                    }
                }
            }
        }
        for p in self.chat_problems(&service_ids) {
            problem(p.key, p.message);
        }
        let i = &self.ingest;
        for (key, value) in [
            ("ingest.max_message_bytes", i.max_message_bytes),
            ("ingest.poll_interval_secs", i.poll_interval_secs),
            ("ingest.maildir_scan_ms", i.maildir_scan_ms),
            ("ingest.idle_renew_secs", i.idle_renew_secs),
            ("ingest.batch_size", i.batch_size as u64),
            ("ingest.batch_bytes", i.batch_bytes),
            ("ingest.parse_timeout_secs", i.parse_timeout_secs),
            ("ingest.io_timeout_secs", i.io_timeout_secs),
            (
                "database.ownership_check_ms",
                self.database.ownership_check_ms,
            ),
            ("ingest.max_backoff_secs", i.max_backoff_secs),
            (
                "routing.presence_grace_secs",
                self.routing.presence_grace_secs,
            ),
            ("routing.sweep_ms", self.routing.sweep_ms),
            ("webhooks.timeout_secs", self.webhooks.timeout_secs),
            ("webhooks.retry_base_ms", self.webhooks.retry_base_ms),
            (
                "webhooks.retry_max_delay_secs",
                self.webhooks.retry_max_delay_secs,
            ),
            ("webhooks.retry_for_secs", self.webhooks.retry_for_secs),
            ("webhooks.max_in_flight", self.webhooks.max_in_flight as u64),
            ("webhooks.sweep_ms", self.webhooks.sweep_ms),
            ("webhooks.keep_days", self.webhooks.keep_days),
            (
                "context.retention_interval_secs",
                self.context.retention_interval_secs,
            ),
            ("context.day_secs", self.context.day_secs),
            ("preview.render_budget_ms", self.preview.render_budget_ms),
            ("preview.link_ttl_secs", self.preview.link_ttl_secs),
            (
                "preview.image_max_bytes",
                self.preview.image_max_bytes as u64,
            ),
            (
                "preview.image_timeout_secs",
                self.preview.image_timeout_secs,
            ),
        ] {
            if value == 0 {
                problem(key.into(), "must be greater than 0".into());
            }
        }
        if self.database.keepalive_secs < 2 {
            problem(
                "database.keepalive_secs".into(),
                "must be at least 2 (seconds)".into(),
            );
        }
        if i.idle_renew_secs >= 29 * 60 {
            problem(
                "ingest.idle_renew_secs".into(),
                "must be under 29 minutes (1740 s): servers drop IDLE after that".into(),
            );
        }
        if let Some(smtp) = &self.smtp {
            match (&smtp.host, &smtp.file) {
                (None, None) => problem(
                    "smtp.host".into(),
                    "give host (an SMTP server) or file (a folder for .eml files)".into(),
                ),
                (Some(_), Some(_)) => {
                    problem("smtp.file".into(), "give host or file, not both".into())
                }
                (Some(h), None) if h.trim().is_empty() => {
                    problem("smtp.host".into(), "must not be empty".into())
                }
                _ => {}
            }
            if smtp.timeout_secs == 0
                || smtp.pool_max == 0
                || smtp.retry_base_secs == 0
                || smtp.max_attempts == 0
            {
                problem("smtp".into(), "timeout_secs, pool_max, retry_base_secs and max_attempts must be greater than 0".into());
            }
            if smtp
                .token_command
                .as_deref()
                .is_some_and(|c| c.trim().is_empty())
            {
                problem("smtp.token_command".into(), "must not be empty".into());
            }
            if smtp.xoauth2 && smtp.token_command.is_none() && smtp.username.is_none() {
                problem(
                    "smtp.username".into(),
                    "XOAUTH2 needs the username the token belongs to".into(),
                );
            }
            if smtp.token_command.is_some() {
                if smtp.username.is_none() {
                    problem(
                        "smtp.username".into(),
                        "token_command needs the username the token belongs to".into(),
                    );
                }
                if smtp.password.is_some()
                    || smtp.password_env.is_some()
                    || smtp.password_file.is_some()
                {
                    problem(
                        "smtp.token_command".into(),
                        "give token_command or a password source, not both".into(),
                    );
                }
            } else if smtp.xoauth2
                && smtp.host.is_some()
                && smtp.password.is_none()
                && smtp.password_env.is_none()
                && smtp.password_file.is_none()
            {
                problem(
                    "smtp.xoauth2".into(),
                    "XOAUTH2 needs an access token: set token_command, password_file, password_env or password".into(),
                );
            }
        }
        out
    }

    /// Mistakes in `[chat]`, `[[chat_channels]]` and the agents' chat ids.
    fn chat_problems(&self, service_ids: &HashSet<&str>) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: String, message: String| out.push(Problem { key, message });
        if self.chat.handle_ttl_secs == 0 || self.chat.handle_ttl_secs > 86_400 {
            problem(
                "chat.handle_ttl_secs".into(),
                "must be between 1 and 86400 (a day)".into(),
            );
        }
        for (key, value) in [
            ("chat.event_retention_days", self.chat.event_retention_days),
            (
                "chat.matrix_sync_timeout_ms",
                self.chat.matrix_sync_timeout_ms,
            ),
            ("chat.membership_sweep_ms", self.chat.membership_sweep_ms),
        ] {
            if value == 0 {
                problem(key.into(), "must be greater than 0".into());
            }
        }
        for (i, a) in self.agents.iter().enumerate() {
            if let Some(m) = &a.matrix_user_id
                && !looks_like_matrix_user(m)
            {
                problem(
                    format!("agents[{i}].matrix_user_id"),
                    format!(
                        "'{}' is not a Matrix user id such as @alice:example.org",
                        crate::domain::clip(m, 64)
                    ),
                );
            }
        }
        let mut ids = HashSet::new();
        for (i, c) in self.chat_channels.iter().enumerate() {
            let key = format!("chat_channels[{i}]");
            if let Err(e) = validate_slug("id", &c.id) {
                problem(format!("{key}.id"), e.to_string());
            }
            if !ids.insert(c.id.as_str()) {
                problem(
                    format!("{key}.id"),
                    format!("duplicate chat channel id '{}'", c.id),
                );
            }
            if !service_ids.contains(c.service.as_str()) {
                problem(
                    format!("{key}.service"),
                    format!("unknown service '{}'", crate::domain::clip(&c.service, 64)),
                );
            }
            match c.url_template() {
                Some(t) => {
                    if let Err(e) = crate::domain::chat::check_url_template(&t) {
                        problem(format!("{key}.chat_url_template"), e);
                    }
                }
                None => problem(
                    format!("{key}.chat_url_template"),
                    "required: where a handle opens the chat, e.g. https://chat.example.com/c/{chat_id}"
                        .into(),
                ),
            }
            let secrets_given = c.secret.is_some()
                || c.secret_env.is_some()
                || c.secret_file.is_some()
                || !c.secrets.is_empty()
                || !c.secrets_env.is_empty()
                || !c.secrets_file.is_empty();
            for (j, s) in c.resolved_secrets.iter().enumerate() {
                if s.expose().len() < 16 {
                    problem(
                        format!("{key}.secret"),
                        format!(
                            "secret {} is too short: use at least 16 random characters",
                            j + 1
                        ),
                    );
                }
            }
            let matrix_keys = c.homeserver_url.is_some()
                || c.user_id.is_some()
                || c.access_token.is_some()
                || c.access_token_env.is_some()
                || c.access_token_file.is_some();
            let jetstream_keys =
                c.url.is_some() || c.stream.is_some() || c.subject.is_some() || c.durable.is_some();
            match (&c.reply_url, c.kind, c.relay) {
                (Some(_), ChatChannelKind::Matrix | ChatChannelKind::Jetstream, _) => problem(
                    format!("{key}.reply_url"),
                    "only webhook channels post replies to a URL (a Matrix channel relays into the room)"
                        .into(),
                ),
                (Some(u), ChatChannelKind::Webhook, _)
                    if !(u.starts_with("https://") || u.starts_with("http://")) =>
                {
                    problem(
                        format!("{key}.reply_url"),
                        "must start with https:// or http://".into(),
                    )
                }
                (None, ChatChannelKind::Webhook, true) => problem(
                    format!("{key}.reply_url"),
                    "required when relay is on: where agents' replies are posted".into(),
                ),
                (_, ChatChannelKind::Jetstream, true) => problem(
                    format!("{key}.relay"),
                    "a JetStream channel does not relay replies: agents answer through the handle"
                        .into(),
                ),
                _ => {}
            }
            match c.kind {
                ChatChannelKind::Webhook => {
                    if !secrets_given {
                        problem(
                            format!("{key}.secret"),
                            "required for a webhook channel: set secret (or secret_env, secret_file, secrets)"
                                .into(),
                        );
                    }
                    if matrix_keys || jetstream_keys {
                        problem(
                            key.clone(),
                            "a webhook channel takes no Matrix or JetStream keys".into(),
                        );
                    }
                }
                ChatChannelKind::Matrix => {
                    match &c.homeserver_url {
                        Some(u) if u.starts_with("https://") || u.starts_with("http://") => {}
                        Some(_) => problem(
                            format!("{key}.homeserver_url"),
                            "must start with https:// or http://".into(),
                        ),
                        None => problem(
                            format!("{key}.homeserver_url"),
                            "required for a Matrix channel".into(),
                        ),
                    }
                    match &c.user_id {
                        Some(u) if looks_like_matrix_user(u) => {}
                        Some(_) => problem(
                            format!("{key}.user_id"),
                            "must be the bot's Matrix user id, e.g. @support:example.org".into(),
                        ),
                        None => problem(
                            format!("{key}.user_id"),
                            "required for a Matrix channel (the bot's account)".into(),
                        ),
                    }
                    let token_given = c.access_token.is_some()
                        || c.access_token_env.is_some()
                        || c.access_token_file.is_some();
                    if !token_given {
                        problem(
                            format!("{key}.access_token"),
                            "required for a Matrix channel: set access_token, access_token_env or access_token_file"
                                .into(),
                        );
                    }
                    if secrets_given || jetstream_keys {
                        problem(
                            key.clone(),
                            "a Matrix channel takes no secret or JetStream keys".into(),
                        );
                    }
                }
                ChatChannelKind::Jetstream => {
                    if let Some(u) = &c.url
                        && !(u.starts_with("nats://") || u.starts_with("tls://"))
                    {
                        problem(
                            format!("{key}.url"),
                            "must start with nats:// or tls://".into(),
                        );
                    }
                    for (field, value) in [("stream", &c.stream), ("subject", &c.subject)] {
                        if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                            problem(
                                format!("{key}.{field}"),
                                "required for a JetStream channel".into(),
                            );
                        }
                    }
                    if let Some(why) = c.subject.as_deref().and_then(nats_subject_problem) {
                        problem(format!("{key}.subject"), why.into());
                    }
                    if let Some(stream) = c.stream.as_deref().filter(|s| !s.trim().is_empty())
                        && stream.contains(|ch: char| {
                            ch.is_whitespace() || matches!(ch, '.' | '*' | '>' | '/' | '\\')
                        })
                    {
                        problem(
                            format!("{key}.stream"),
                            "a stream name has no spaces, '.', '*', '>', '/' or '\\'".into(),
                        );
                    }
                    if let Some(d) = &c.durable
                        && (d.is_empty()
                            || !d
                                .chars()
                                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'))
                    {
                        problem(
                            format!("{key}.durable"),
                            "use letters, digits, - and _ only".into(),
                        );
                    }
                    if matrix_keys {
                        problem(
                            key.clone(),
                            "a JetStream channel takes no Matrix keys".into(),
                        );
                    }
                }
            }
        }
        out
    }

    /// The id of the `i`-th mailbox (explicit or derived).
    pub fn mailbox_id(&self, i: usize) -> String {
        let m = &self.mailboxes[i];
        m.id.clone()
            .unwrap_or_else(|| format!("{}-{}", m.service, i))
    }
}

impl ServiceConfig {
    /// The routing part of the service's settings.
    pub fn routing_settings(&self) -> crate::domain::service::ServiceSettings {
        crate::domain::service::ServiceSettings {
            rona_timeout_secs: self.rona_timeout_secs.clone(),
            distribution: self.distribution,
            broadcast_size: self.broadcast_size,
            rona_reset_secs: self.rona_reset_secs,
            max_ronas: self.max_ronas,
            overflow_service: self.overflow_service.clone(),
            capacity: self.capacity,
            ..Default::default()
        }
    }

    /// The service's own addresses, lowercased.
    pub fn own_addresses(&self) -> Vec<String> {
        self.email_address
            .iter()
            .chain(self.email_addresses.iter())
            .map(|a| a.trim().to_lowercase())
            .collect()
    }
}

/// What is wrong with a NATS subject (filter), if anything: tokens
/// separated by `.`, none empty, no spaces; `*` only as a whole token, `>`
/// only as the whole last one.
fn nats_subject_problem(subject: &str) -> Option<&'static str> {
    if subject.trim().is_empty() {
        return None; // told as missing
    }
    if subject.contains(char::is_whitespace) {
        return Some("a NATS subject has no spaces (tokens are separated by '.')");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens.iter().any(|t| t.is_empty()) {
        return Some("a NATS subject has no empty token (no leading, trailing or double '.')");
    }
    for (i, t) in tokens.iter().enumerate() {
        if t.contains('*') && *t != "*" {
            return Some("'*' stands for one whole token (as in orders.*.created)");
        }
        if t.contains('>') && (*t != ">" || i + 1 != tokens.len()) {
            return Some("'>' stands for the rest and only as the last token (as in chat.>)");
        }
    }
    None
}

/// The first directive of a `log.level` that names no level (a typo such
/// as `warnn` would otherwise be read as a target and silence every log).
fn unknown_log_directive(level: &str) -> Option<&str> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    level
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .find(|d| {
            let named = d.rsplit_once('=').map_or(*d, |(_, l)| l);
            !LEVELS.iter().any(|l| named.eq_ignore_ascii_case(l))
        })
}

fn looks_like_matrix_user(s: &str) -> bool {
    s.strip_prefix('@')
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(local, server)| {
            !local.is_empty() && !server.is_empty() && !s.contains(char::is_whitespace)
        })
}

fn looks_like_email(s: &str) -> bool {
    match s.trim().split_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && !domain.is_empty() && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

fn resolve_secret(
    key: &str,
    inline: &Option<Secret>,
    env_var: &Option<String>,
    file: &Option<PathBuf>,
    env: &[(String, String)],
) -> Result<Option<Secret>, Problem> {
    let set = [inline.is_some(), env_var.is_some(), file.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set > 1 {
        let field = key.rsplit('.').next().unwrap_or(key);
        return Err(Problem {
            key: key.into(),
            message: format!("give only one of {field}, {field}_env and {field}_file"),
        });
    }
    if let Some(v) = inline {
        return Ok(Some(v.clone()));
    }
    if let Some(var) = env_var {
        return match env.iter().find(|(k, _)| k == var) {
            Some((_, v)) if !v.is_empty() => Ok(Some(Secret::new(v.clone()))),
            _ => Err(Problem {
                key: format!("{key}_env"),
                message: format!("environment variable {var} is not set"),
            }),
        };
    }
    if let Some(path) = file {
        return match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => {
                Ok(Some(Secret::new(v.trim_end_matches(['\r', '\n']))))
            }
            Ok(_) => Err(Problem {
                key: format!("{key}_file"),
                message: format!("{} is empty", path.display()),
            }),
            Err(e) => Err(Problem {
                key: format!("{key}_file"),
                message: format!("cannot read {}: {e}", path.display()),
            }),
        };
    }
    Ok(None)
}

/// What a configuration key holds, read from the configuration types
/// themselves (see [`shape_of`]), so that the environment overrides know every
/// key without a list to keep up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// A table with these keys (a struct).
    Table(&'static [&'static str]),
    /// A list (`[[services]]`, `scopes = [...]`).
    List,
    /// Text: a string, a path, a secret, one of a set of words.
    Text,
    /// A number or true/false.
    Scalar,
    /// Anything else (a map, a number-or-table such as `rona_timeout_secs`).
    Other,
    /// No such key.
    Unknown,
}

/// The shape of the value at `path` inside `T` (`[]`: `T` itself;
/// `["services"]`: the list; `["services", "[]"]`: one of its items;
/// `["services", "name"]`: a service's name, a list being looked through to
/// its items). Works by deserializing `T` from a
/// probe that answers no data and stops at the first question asked of
/// the value at `path`.
fn shape_of<'de, T: Deserialize<'de>>(path: &[&'static str]) -> Shape {
    match T::deserialize(probe::Probe { path }) {
        Err(probe::Found(Some(shape))) => shape,
        _ => Shape::Other,
    }
}

mod probe {
    use super::Shape;
    use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
    use std::fmt;

    /// The probe's answer: what was asked (`None`: something else failed).
    #[derive(Debug)]
    pub struct Found(pub Option<Shape>);

    impl fmt::Display for Found {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }
    impl std::error::Error for Found {}
    impl de::Error for Found {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Found(None)
        }
    }

    pub struct Probe<'p> {
        pub path: &'p [&'static str],
    }

    impl Probe<'_> {
        fn found<T>(&self, shape: Shape) -> Result<T, Found> {
            if self.path.is_empty() {
                Err(Found(Some(shape)))
            } else {
                // A key below a value that has none.
                Err(Found(Some(Shape::Unknown)))
            }
        }
    }

    macro_rules! answer {
        ($shape:expr => $($method:ident)*) => {
            $(fn $method<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
                self.found($shape)
            })*
        };
    }

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = Found;
        answer!(Shape::Text => deserialize_str deserialize_string deserialize_char deserialize_identifier);
        answer!(Shape::Scalar => deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
            deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
            deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64);
        answer!(Shape::Other => deserialize_any deserialize_map deserialize_bytes
            deserialize_byte_buf deserialize_unit deserialize_ignored_any);
        fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Found> {
            v.visit_some(self)
        }
        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            v: V,
        ) -> Result<V::Value, Found> {
            v.visit_newtype_struct(self)
        }
        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: V,
        ) -> Result<V::Value, Found> {
            self.found(Shape::Other)
        }
        fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Found> {
            self.found(Shape::List)
        }
        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: usize,
            _: V,
        ) -> Result<V::Value, Found> {
            self.found(Shape::List)
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            // Every enum of the configuration is one word.
            self.found(Shape::Text)
        }
        fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Found> {
            match self.path.split_first() {
                None => Err(Found(Some(Shape::List))),
                // `[]`: the list's item itself.
                Some((&"[]", rest)) => v.visit_seq(OneItem { path: rest }),
                Some(_) => v.visit_seq(OneItem { path: self.path }),
            }
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Found> {
            match self.path.split_first() {
                None => Err(Found(Some(Shape::Table(fields)))),
                Some((key, _)) if !fields.contains(key) => Err(Found(Some(Shape::Unknown))),
                Some((key, rest)) => v.visit_map(OneEntry {
                    key: Some(key),
                    rest,
                }),
            }
        }
    }

    /// A list of one item, probed at the same path.
    struct OneItem<'p> {
        path: &'p [&'static str],
    }

    impl<'de> de::SeqAccess<'de> for OneItem<'_> {
        type Error = Found;
        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, Found> {
            seed.deserialize(Probe { path: self.path }).map(Some)
        }
    }

    /// A table of one key, whose value is probed at the rest of the path.
    struct OneEntry<'p> {
        key: Option<&'static str>,
        rest: &'p [&'static str],
    }

    impl<'de> de::MapAccess<'de> for OneEntry<'_> {
        type Error = Found;
        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Found> {
            match self.key.take() {
                Some(k) => seed
                    .deserialize(IntoDeserializer::<Found>::into_deserializer(k))
                    .map(Some),
                None => Ok(None),
            }
        }
        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Found> {
            seed.deserialize(Probe { path: self.rest })
        }
    }
}

/// The keys of `T`'s table, if it is one.
fn keys_of<'de, T: Deserialize<'de>>(path: &[&'static str]) -> &'static [&'static str] {
    match shape_of::<T>(path) {
        Shape::Table(keys) => keys,
        _ => &[],
    }
}

/// Keys whose environment values are always taken exactly as written
/// (quotes included): secrets and commands.
const VERBATIM_KEYS: &[&str] = &[
    "password",
    "token",
    "dkim_key",
    "token_command",
    "username",
    "secret",
    "access_token",
];

/// A Kubernetes service-link variable (after the prefix, lower-cased):
/// `service_host`, `service_port`, `service_port_<name>`, `port`,
/// `port_<n>_<proto>`, `port_<n>_<proto>_{addr,port,proto}`.
fn is_service_link(rest: &str) -> bool {
    rest == "service_host"
        || rest == "service_port"
        || rest.starts_with("service_port_")
        || rest == "port"
        || rest
            .strip_prefix("port_")
            .is_some_and(|p| p.starts_with(|c: char| c.is_ascii_digit()))
}

/// Applies `SWITCHBOARD_<SECTION>_<KEY>` and `SWITCHBOARD_<LIST>_<INDEX>_<KEY>`
/// variables. Sections and keys are those of [`Config`] (an unknown one is
/// an error naming the variable). A key that takes text takes the value as
/// written (a TOML string in quotes is unquoted, except for secrets and
/// commands); any other is read as a TOML value (`5`, `true`, `["a","b"]`,
/// `{ email = 3 }`), or else as a string, which the type check then refuses.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: &[(String, String)],
) -> Result<(), ConfigError> {
    let sections = keys_of::<Config>(&[]);
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_lowercase();
        // Test-harness and script variables share the prefix but are not
        // configuration; nor are the variables Kubernetes gives every pod for
        // a Service named `switchboard` (SWITCHBOARD_SERVICE_HOST,
        // SWITCHBOARD_PORT_8080_TCP_ADDR, …).
        if rest.starts_with("test_")
            || rest.starts_with("bench_")
            || rest == "skip_install"
            || is_service_link(&rest)
        {
            continue;
        }
        let err = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        // The longest section the name starts with (`chat_channels`, not `chat`).
        let Some(section) = sections
            .iter()
            .filter(|s| rest.starts_with(&format!("{s}_")))
            .max_by_key(|s| s.len())
            .copied()
        else {
            // A section named without a key (SWITCHBOARD_HTTP) is not a
            // section that does not exist.
            if let Some(section) = sections.iter().find(|s| **s == rest) {
                let upper = section.to_uppercase();
                let form = if shape_of::<Config>(&[section]) == Shape::List {
                    format!("{ENV_PREFIX}{upper}_<INDEX>_<KEY>")
                } else {
                    format!("{ENV_PREFIX}{upper}_<KEY>")
                };
                return Err(err(format!(
                    "a whole section cannot be set from the environment: set its keys one by one, as {form}"
                )));
            }
            return Err(err(format!(
                "no such configuration section: use {ENV_PREFIX}<SECTION>_<KEY> with a section of {}",
                sections.join(", ")
            )));
        };
        let tail = &rest[section.len() + 1..];
        let is_list = shape_of::<Config>(&[section]) == Shape::List;
        let keys = if is_list {
            keys_of::<Config>(&[section, "[]"])
        } else {
            keys_of::<Config>(&[section])
        };
        let (index, key) = if is_list {
            let (index, key) = tail.split_once('_').ok_or_else(|| {
                err(format!(
                    "expected {ENV_PREFIX}{}_<INDEX>_<KEY>",
                    section.to_uppercase()
                ))
            })?;
            let index: usize = index
                .parse()
                .map_err(|_| err(format!("'{index}' is not a list index")))?;
            (Some(index), key)
        } else {
            (None, tail)
        };
        let Some(key) = keys.iter().find(|k| **k == key).copied() else {
            let place = match index {
                Some(i) => format!("{section}[{i}]"),
                None => format!("[{section}]"),
            };
            // `CAPACITY_EMAIL`: a table is set whole, as TOML.
            if let Some(table_key) = keys.iter().find(|k| {
                key.starts_with(&format!("{k}_"))
                    && matches!(
                        shape_of::<Config>(&[section, k]),
                        Shape::Table(_) | Shape::Other
                    )
            }) {
                let whole = format!(
                    "{}{}",
                    &var[..var.len() - key.len()],
                    table_key.to_uppercase()
                );
                return Err(err(format!(
                    "unknown key '{key}' in {place}: {table_key} is set whole, as a TOML inline table such as {whole}='{{ email = 3, im = 2 }}'"
                )));
            }
            return Err(err(format!(
                "unknown key '{key}' in {place}: the keys are {}",
                keys.join(", ")
            )));
        };
        let value = if shape_of::<Config>(&[section, key]) == Shape::Text {
            if VERBATIM_KEYS.contains(&key) {
                toml::Value::String(raw.clone())
            } else {
                match parse_env_value(raw) {
                    quoted @ toml::Value::String(_)
                        if raw.trim_start().starts_with(['"', '\'']) =>
                    {
                        quoted
                    }
                    _ => toml::Value::String(raw.clone()),
                }
            }
        } else {
            parse_env_value(raw)
        };
        let slot = table.entry(section.to_string()).or_insert_with(|| {
            if is_list {
                toml::Value::Array(Vec::new())
            } else {
                toml::Value::Table(toml::Table::new())
            }
        });
        let item = match index {
            Some(index) => {
                let list = slot
                    .as_array_mut()
                    .ok_or_else(|| err(format!("{section} is not a list")))?;
                if index > list.len() {
                    return Err(err(format!(
                        "{section}[{index}] does not exist and is not the next one ({})",
                        list.len()
                    )));
                }
                if index == list.len() {
                    list.push(toml::Value::Table(toml::Table::new()));
                }
                list[index]
                    .as_table_mut()
                    .ok_or_else(|| err(format!("{section}[{index}] is not a table")))?
            }
            None => slot
                .as_table_mut()
                .ok_or_else(|| err(format!("{section} is not a table")))?,
        };
        item.insert(key.to_string(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[database]
url = "sqlite://data/x.db"

[[services]]
id = "support"
name = "Support"
email_address = "support@example.com"
codes = [{ code = "billing", label = "Billing", kind = "primary" }]

[[agents]]
id = "alice"
name = "Alice"
email = "alice@example.com"
token = "alice-token-0123456789"
services = ["support"]
"#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_parts(text, Path::new("test.toml"), &env)
    }

    fn problems(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        match load(text, env) {
            Err(ConfigError::Invalid(p)) => p.iter().map(|p| p.to_string()).collect(),
            Err(other) => vec![other.to_string()],
            Ok(_) => vec![],
        }
    }

    #[test]
    fn a_log_level_names_levels() {
        for good in [
            "info",
            "WARN",
            "info,switchboard=debug",
            "sqlx=warn, tower_http=off",
            "",
        ] {
            assert_eq!(unknown_log_directive(good), None, "{good}");
        }
        assert_eq!(unknown_log_directive("warnn"), Some("warnn"));
        assert_eq!(
            unknown_log_directive("info,switchboard=verbose"),
            Some("switchboard=verbose")
        );
    }

    #[test]
    fn a_syntax_error_names_its_place_without_quoting_the_line() {
        let text = "[database]\nurl = \"sqlite://x.db\"\n[[agents]]\ntoken = \"sb_secret_value";
        let e = text.parse::<toml::Table>().unwrap_err();
        let message = syntax_message(text, &e);
        assert!(message.starts_with("line 4, column "), "{message}");
        assert!(!message.contains("sb_secret_value"), "{message}");
    }

    #[test]
    fn a_good_config_loads_with_defaults() {
        let c = load(GOOD, &[]).unwrap();
        assert_eq!(c.http.bind, "127.0.0.1:8080");
        assert_eq!(c.services[0].codes[0].code, "billing");
        assert_eq!(
            c.agents[0].resolved_token.as_ref().unwrap().expose(),
            "alice-token-0123456789"
        );
    }

    #[test]
    fn unknown_service_is_named_with_its_key() {
        let text = GOOD.replace(
            "services = [\"support\"]",
            "services = [\"support\", \"sales\"]",
        );
        assert_eq!(
            problems(&text, &[]),
            vec!["agents[0].services: unknown service 'sales'"]
        );
    }

    #[test]
    fn environment_overrides_keys() {
        let c = load(
            GOOD,
            &[
                ("SWITCHBOARD_DATABASE_URL", "postgres://u@h/db"),
                ("SWITCHBOARD_DATABASE_MAX_CONNECTIONS", "4"),
                ("SWITCHBOARD_HTTP_BIND", "0.0.0.0:9000"),
                ("SWITCHBOARD_AGENTS_0_NAME", "Alice B"),
                ("SWITCHBOARD_TEST_PG_URL", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.database.url, "postgres://u@h/db");
        assert_eq!(c.database.max_connections, 4);
        assert_eq!(c.http.bind, "0.0.0.0:9000");
        assert_eq!(c.agents[0].name, "Alice B");
    }

    #[test]
    fn the_environment_reaches_every_key_of_every_section() {
        // The keys come from the types: a field added to a section is
        // overridable without a list to update.
        assert_eq!(
            keys_of::<Config>(&["routing"]),
            ["presence_grace_secs", "sweep_ms"]
        );
        for key in [
            "distribution",
            "broadcast_size",
            "rona_reset_secs",
            "max_ronas",
            "overflow_service",
            "capacity",
        ] {
            assert!(
                keys_of::<Config>(&["services", "[]"]).contains(&key),
                "{key}"
            );
        }
        assert!(keys_of::<Config>(&["agents", "[]"]).contains(&"supervisor"));
        assert!(keys_of::<Config>(&["smtp"]).contains(&"ca_file"));
        assert_eq!(shape_of::<Config>(&["services"]), Shape::List);
        assert_eq!(shape_of::<Config>(&["services", "name"]), Shape::Text);
        assert_eq!(shape_of::<Config>(&["smtp", "password"]), Shape::Text);
        assert_eq!(shape_of::<Config>(&["mailboxes", "port"]), Shape::Scalar);
        assert_eq!(shape_of::<Config>(&["services", "nope"]), Shape::Unknown);

        let text = format!("{GOOD}\n[[services]]\nid = \"backoffice\"\nname = \"Back office\"\n");
        let c = load(
            &text,
            &[
                ("SWITCHBOARD_ROUTING_PRESENCE_GRACE_SECS", "7"),
                ("SWITCHBOARD_ROUTING_SWEEP_MS", "250"),
                ("SWITCHBOARD_SERVICES_0_DISTRIBUTION", "pickup"),
                ("SWITCHBOARD_SERVICES_0_BROADCAST_SIZE", "5"),
                ("SWITCHBOARD_SERVICES_0_RONA_RESET_SECS", "60"),
                ("SWITCHBOARD_SERVICES_0_MAX_RONAS", "3"),
                ("SWITCHBOARD_SERVICES_0_OVERFLOW_SERVICE", "backoffice"),
                ("SWITCHBOARD_SERVICES_0_CAPACITY", "{ email = 3, im = 2 }"),
                ("SWITCHBOARD_AGENTS_0_SUPERVISOR", "true"),
                ("SWITCHBOARD_HTTP_PUBLIC_URL", "\"https://sb.example.com\""),
            ],
        )
        .unwrap();
        assert_eq!(c.routing.presence_grace_secs, 7);
        assert_eq!(c.routing.sweep_ms, 250);
        let s = &c.services[0];
        assert_eq!(s.distribution, crate::domain::routing::Distribution::Pickup);
        assert_eq!(
            (s.broadcast_size, s.rona_reset_secs, s.max_ronas),
            (5, 60, Some(3))
        );
        assert_eq!(s.overflow_service.as_deref(), Some("backoffice"));
        assert_eq!(
            (s.capacity.email, s.capacity.im, s.capacity.call),
            (Some(3), Some(2), None)
        );
        assert!(c.agents[0].supervisor);
        // A quoted string is unquoted, as before.
        assert_eq!(c.http.public_url.as_deref(), Some("https://sb.example.com"));

        // Kubernetes' service links for a Service named switchboard are not ours.
        let p = problems(
            GOOD,
            &[
                ("SWITCHBOARD_SERVICE_HOST", "10.0.0.1"),
                ("SWITCHBOARD_SERVICE_PORT", "8080"),
                ("SWITCHBOARD_SERVICE_PORT_HTTP", "8080"),
                ("SWITCHBOARD_PORT", "tcp://10.0.0.1:8080"),
                ("SWITCHBOARD_PORT_8080_TCP_ADDR", "10.0.0.1"),
            ],
        );
        assert!(p.is_empty(), "{p:?}");
        // A section without a key says how to name one.
        for (var, form) in [
            ("SWITCHBOARD_HTTP", "SWITCHBOARD_HTTP_<KEY>"),
            (
                "SWITCHBOARD_MAILBOXES",
                "SWITCHBOARD_MAILBOXES_<INDEX>_<KEY>",
            ),
        ] {
            let e = Config::from_parts(GOOD, Path::new("t.toml"), &[(var.into(), "a".into())])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(form) && !e.contains("no such"), "{e}");
        }
        // Checked like the file's values.
        let p = problems(GOOD, &[("SWITCHBOARD_ROUTING_SWEEP_MS", "0")]);
        assert_eq!(p, ["routing.sweep_ms: must be greater than 0"]);
    }

    #[test]
    fn unknown_environment_sections_and_keys_are_errors() {
        for (var, told) in [
            ("SWITCHBOARD_FOO_BAR", "no such configuration section"),
            (
                "SWITCHBOARD_ROUTING_SWEEPMS",
                "unknown key 'sweepms' in [routing]",
            ),
            (
                "SWITCHBOARD_SERVICES_0_PRIORITYY",
                "unknown key 'priorityy' in services[0]",
            ),
            (
                "SWITCHBOARD_SERVICES_0_CAPACITY_EMAIL",
                "SWITCHBOARD_SERVICES_0_CAPACITY='{ email = 3, im = 2 }'",
            ),
        ] {
            let e = load(GOOD, &[(var, "1")]).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("environment variable {var}: ")),
                "{e}"
            );
            assert!(e.contains(told), "{e}");
        }
    }

    #[test]
    fn a_text_key_takes_the_environment_value_as_text() {
        let c = load(GOOD, &[("SWITCHBOARD_SERVICES_0_NAME", "2024")]).unwrap();
        assert_eq!(c.services[0].name, "2024");
        let c = load(GOOD, &[("SWITCHBOARD_AGENTS_0_NAME", "true")]).unwrap();
        assert_eq!(c.agents[0].name, "true");
        // A number key still reads numbers.
        let c = load(GOOD, &[("SWITCHBOARD_SERVICES_0_PRIORITY", "5")]).unwrap();
        assert_eq!(c.services[0].priority, 5);
    }

    #[test]
    fn every_routing_mistake_of_a_service_is_told_with_its_key() {
        let text = GOOD.replace(
            "codes = [",
            "max_ronas = 0\nbroadcast_size = 0\nrona_reset_secs = 90000\nrona_timeout_secs = { im = 0 }\ncodes = [",
        );
        assert_eq!(
            problems(&text, &[]),
            [
                "services[0].rona_timeout_secs.im: 0 is out of range: use 1 to 86400 seconds",
                "services[0].broadcast_size: 0 is out of range: use 1 to 100",
                "services[0].rona_reset_secs: 90000 is out of range: use 0 to 86400 (seconds)",
                "services[0].max_ronas: 0 is out of range: use 1 or more, or leave it out for no limit",
            ]
        );
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_shown() {
        let with_channel = format!(
            "{GOOD}\n[[chat_channels]]\nid = \"web\"\nservice = \"support\"\nkind = \"webhook\"\n\
             secrets = [\"0123456789abcdef0123456789\"]\n"
        );
        let err = Config::from_parts(
            &with_channel,
            Path::new("t.toml"),
            &[(
                "SWITCHBOARD_CHAT_CHANNELS_0_SECRETS".into(),
                "envsecret-should-not-show".into(),
            )],
        );
        let text = match err {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        assert!(
            !text.contains("envsecret") && text.contains("secrets"),
            "{text}"
        );
        let text = GOOD.replace(
            "token = \"alice-token-0123456789\"",
            "token = [\"file-secret-should-not-show\"]",
        );
        let err = Config::from_parts(&text, Path::new("t.toml"), &[]);
        let text = match err {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a list is no token"),
        };
        assert!(!text.contains("file-secret"), "{text}");
        assert!(text.contains("token"), "{text}");
        // A quote inside it, or a number (quoted in backticks by serde).
        for value in ["ab\"cdefgh", "20240101123456"] {
            let err = Config::from_parts(
                &with_channel,
                Path::new("t.toml"),
                &[("SWITCHBOARD_CHAT_CHANNELS_0_SECRETS".into(), value.into())],
            );
            let text = err.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                !text.contains("cdefgh")
                    && !text.contains("20240101123456")
                    && text.contains("not shown"),
                "{text}"
            );
        }
        let numeric = with_channel.replace(
            "secrets = [\"0123456789abcdef0123456789\"]",
            "secrets = 20240101123456",
        );
        let text = Config::from_parts(&numeric, Path::new("t.toml"), &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            !text.contains("20240101123456") && text.contains("secrets"),
            "{text}"
        );
    }

    #[test]
    fn max_ronas_without_an_overflow_service_is_refused() {
        // Without somewhere to go, the limit would silently do nothing.
        let text = GOOD.replace("codes = [", "max_ronas = 2\ncodes = [");
        assert_eq!(
            problems(&text, &[]),
            [
                "services[0].max_ronas: set overflow_service too: where a task goes after this many RONAs (without it there is no limit: leave max_ronas out)"
            ]
        );
    }

    #[test]
    fn integrations_sharing_a_token_are_refused() {
        let text = format!(
            "{GOOD}\n[[integrations]]\nid = \"crm\"\ntoken = \"crm-token-0123456789\"\n\
             [[integrations]]\nid = \"erp\"\ntoken = \"crm-token-0123456789\"\n"
        );
        assert_eq!(
            problems(&text, &[]),
            [
                "integrations[1].token: the same token as integrations[0]: every agent and integration needs its own"
            ]
        );
        let text =
            format!("{GOOD}\n[[integrations]]\nid = \"crm\"\ntoken = \"alice-token-0123456789\"\n");
        assert_eq!(
            problems(&text, &[]),
            [
                "integrations[0].token: the same token as agents[0]: every agent and integration needs its own"
            ]
        );
    }

    #[test]
    fn unknown_environment_key_is_an_error() {
        let p = problems(GOOD, &[("SWITCHBOARD_HTTP_PORT", "1")]);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("SWITCHBOARD_HTTP_PORT"), "{p:?}");
    }

    #[test]
    fn secrets_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        std::fs::write(&file, "file-token-0123456789\n").unwrap();
        let text = GOOD.replace(
            "token = \"alice-token-0123456789\"",
            &format!("token_file = \"{}\"", file.display()),
        );
        let c = load(&text, &[]).unwrap();
        assert_eq!(
            c.agents[0].resolved_token.as_ref().unwrap().expose(),
            "file-token-0123456789"
        );

        let text = GOOD.replace(
            "token = \"alice-token-0123456789\"",
            "token_env = \"ALICE_TOKEN\"",
        );
        assert_eq!(
            problems(&text, &[]),
            vec!["agents[0].token_env: environment variable ALICE_TOKEN is not set"]
        );
        let c = load(&text, &[("ALICE_TOKEN", "env-token-0123456789")]).unwrap();
        assert_eq!(
            c.agents[0].resolved_token.as_ref().unwrap().expose(),
            "env-token-0123456789"
        );
    }

    #[test]
    fn secrets_never_print() {
        let c = load(GOOD, &[]).unwrap();
        let shown = format!("{:?}", c.agents[0].resolved_token);
        assert!(!shown.contains("alice-token"), "{shown}");
        // Nor does the whole configuration, inline secrets included.
        let text = format!(
            "{GOOD}\n[smtp]\nhost = \"h\"\nusername = \"u\"\npassword = \"smtp-pass-xyz\"\n\n[[mailboxes]]\nservice = \"support\"\nkind = \"imap\"\nhost = \"h\"\nusername = \"u\"\npassword = \"imap-pass-xyz\"\n"
        );
        let c = load(&text, &[]).unwrap();
        let shown = format!("{c:?}");
        for secret in ["alice-token", "smtp-pass-xyz", "imap-pass-xyz"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn numeric_secrets_are_neither_echoed_nor_retyped() {
        let text = format!("{GOOD}\n[smtp]\nhost = \"h\"\nusername = \"u\"\npassword = 98765432\n");
        let shown = match load(&text, &[]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("an unquoted password is refused"),
        };
        assert!(!shown.contains("98765432"), "{shown}");
        assert!(shown.contains("quotes"), "{shown}");
        let text = format!("{GOOD}\n[smtp]\nhost = \"h\"\nusername = \"u\"\n");
        let c = load(&text, &[("SWITCHBOARD_SMTP_PASSWORD", "12345678")]).unwrap();
        let smtp = c.smtp.expect("smtp");
        assert_eq!(
            smtp.resolved_password
                .map(|p| p.expose().to_owned())
                .as_deref(),
            Some("12345678")
        );
        let c = load(&text, &[("SWITCHBOARD_SMTP_PASSWORD", "\"quoted\"")]).unwrap();
        assert_eq!(
            c.smtp
                .and_then(|s| s.resolved_password)
                .map(|p| p.expose().to_owned())
                .as_deref(),
            Some("\"quoted\"")
        );
    }

    #[test]
    fn smtp_xoauth2_token_sources_are_checked() {
        let smtp = |body: &str| format!("{GOOD}\n[smtp]\nhost = \"smtp.example.com\"\n{body}\n");
        let ok = smtp("username = \"support@example.com\"\ntoken_command = \"print-token\"");
        let c = load(&ok, &[]).unwrap();
        assert_eq!(
            c.smtp.as_ref().and_then(|s| s.token_command.as_deref()),
            Some("print-token")
        );
        let env = load(
            &smtp("username = \"support@example.com\""),
            &[("SWITCHBOARD_SMTP_TOKEN_COMMAND", "from-env")],
        )
        .unwrap();
        assert_eq!(
            env.smtp.as_ref().and_then(|s| s.token_command.as_deref()),
            Some("from-env")
        );
        let p = problems(&smtp("token_command = \"print-token\""), &[]);
        assert!(p.iter().any(|l| l.starts_with("smtp.username")), "{p:?}");
        let p = problems(
            &smtp("username = \"u\"\ntoken_command = \"t\"\npassword = \"p\""),
            &[],
        );
        assert!(
            p.iter().any(|l| l.starts_with("smtp.token_command")),
            "{p:?}"
        );
        let p = problems(&smtp("username = \"u\"\nxoauth2 = true"), &[]);
        assert!(p.iter().any(|l| l.starts_with("smtp.xoauth2")), "{p:?}");
    }

    #[test]
    fn many_problems_are_listed_together() {
        let text = r#"
[database]
url = "mysql://x"
[http]
bind = "nowhere"
[[services]]
id = "bad id"
name = ""
[[agents]]
id = "bob"
name = "Bob"
email = "bob"
token = "short"
[[mailboxes]]
service = "nope"
kind = "imap"
after_ingest = "delete"
"#;
        let p = problems(text, &[]);
        for expected in [
            "database.url",
            "http.bind",
            "services[0].id",
            "services[0].name",
            "agents[0].email",
            "agents[0].token: too short",
            "mailboxes[0].service: unknown service 'nope'",
            "mailboxes[0].after_ingest",
            "mailboxes[0].host",
            "mailboxes[0].password",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(expected)),
                "missing {expected} in {p:?}"
            );
        }
    }

    #[test]
    fn context_links_integrations_and_the_calling_code_are_checked() {
        let links = GOOD.replace(
            "codes = [",
            "context_links = [{ label = \"CRM\", url_template = \"https://crm.example/$(Customer.Email)\" }, { label = \"Bad\", url_template = \"https://crm.example/$(Customer.Fax)\" }]\ncodes = [",
        );
        let p = problems(&links, &[]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(
                "services[0].context_links[1].url_template: unknown placeholder $(Customer.Fax)"
            ),
            "{p:?}"
        );
        let text = format!(
            "{GOOD}\n[directory]\ndefault_calling_code = 41\n[[integrations]]\nid = \"crm\"\ntoken = \"crm-token-0123456789\"\n"
        );
        let c = load(&text, &[]).unwrap();
        assert_eq!(c.integrations[0].scopes, ["tasks:read", "tasks:write"]);
        assert_eq!(c.directory.default_calling_code, Some(41));
        let bad = format!(
            "{GOOD}\n[directory]\ndefault_calling_code = 0\n[[integrations]]\nid = \"crm\"\ntoken = \"alice-token-0123456789\"\nscopes = [\"tasks:delete\"]\n"
        );
        let p = problems(&bad, &[]);
        for expected in [
            "integrations[0].scopes: unknown scope 'tasks:delete'",
            "integrations[0].token: the same token as agents[0]",
            "directory.default_calling_code",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(expected)),
                "missing {expected} in {p:?}"
            );
        }
        let env = load(
            &text,
            &[
                ("SWITCHBOARD_WEBHOOKS_RETRY_FOR_SECS", "60"),
                (
                    "SWITCHBOARD_INTEGRATIONS_0_TOKEN",
                    "env-crm-token-0123456789",
                ),
            ],
        )
        .unwrap();
        assert_eq!(env.webhooks.retry_for_secs, 60);
        assert_eq!(
            env.integrations[0]
                .resolved_token
                .as_ref()
                .unwrap()
                .expose(),
            "env-crm-token-0123456789"
        );
    }

    #[test]
    fn chat_channels_load_with_their_secrets_and_are_checked() {
        let text = format!(
            "{GOOD}\n[[chat_channels]]\nid = \"web\"\nservice = \"support\"\nkind = \"webhook\"\n\
             secret = \"inline-secret-0123456789\"\nsecrets_env = [\"NEXT_SECRET\"]\n\
             chat_url_template = \"https://chat.example.com/c/{{chat_id}}\"\n\
             [[chat_channels]]\nid = \"mx\"\nservice = \"support\"\nkind = \"matrix\"\n\
             homeserver_url = \"https://matrix.example.org\"\nuser_id = \"@bot:example.org\"\naccess_token_env = \"MX\"\n"
        );
        let c = load(
            &text,
            &[
                ("NEXT_SECRET", "next-secret-0123456789"),
                ("MX", "syt_token"),
                ("SWITCHBOARD_CHAT_HANDLE_TTL_SECS", "60"),
                ("SWITCHBOARD_AGENTS_0_MATRIX_USER_ID", "@alice:example.org"),
            ],
        )
        .unwrap();
        let web = &c.chat_channels[0];
        let secrets: Vec<&str> = web.resolved_secrets.iter().map(|s| s.expose()).collect();
        assert_eq!(
            secrets,
            vec!["inline-secret-0123456789", "next-secret-0123456789"]
        );
        assert_eq!(c.chat.handle_ttl_secs, 60);
        assert_eq!(
            c.agents[0].matrix_user_id.as_deref(),
            Some("@alice:example.org")
        );
        assert_eq!(
            c.chat_channels[1].url_template().as_deref(),
            Some("https://matrix.to/#/{room_id}")
        );
        assert_eq!(
            c.chat_channels[1]
                .resolved_access_token
                .as_ref()
                .map(|t| t.expose()),
            Some("syt_token")
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("inline-secret") && !shown.contains("syt_token"),
            "{shown}"
        );

        let bad = format!(
            "{GOOD}\n[[chat_channels]]\nid = \"web\"\nservice = \"nope\"\nkind = \"webhook\"\n\
             chat_url_template = \"https://x/{{visitor}}\"\n\
             [[chat_channels]]\nid = \"mx\"\nservice = \"support\"\nkind = \"matrix\"\nuser_id = \"bot\"\n\
             [[chat_channels]]\nid = \"js\"\nservice = \"support\"\nkind = \"jetstream\"\nurl = \"http://x\"\n\
             [[chat_channels]]\nid = \"short\"\nservice = \"support\"\nkind = \"webhook\"\nsecret = \"short\"\n\
             [[chat_channels]]\nid = \"js2\"\nservice = \"support\"\nkind = \"jetstream\"\nurl = \"nats://x\"\n\
             stream = \"my chats\"\nsubject = \"chat events\"\nchat_url_template = \"https://x/{{chat_id}}\"\n\
             [[chat_channels]]\nid = \"js3\"\nservice = \"support\"\nkind = \"jetstream\"\nurl = \"nats://x\"\n\
             stream = \"CHAT\"\nsubject = \"chat.>.x\"\nchat_url_template = \"https://x/{{chat_id}}\"\n\
             [chat]\nhandle_ttl_secs = 0\n"
        );
        let p = problems(&bad, &[("SWITCHBOARD_AGENTS_0_MATRIX_USER_ID", "alice")]);
        for expected in [
            "chat_channels[0].service: unknown service 'nope'",
            "chat_channels[0].chat_url_template: unknown placeholder {visitor}",
            "chat_channels[0].secret: required",
            "chat_channels[1].homeserver_url: required",
            "chat_channels[1].user_id: must be",
            "chat_channels[1].access_token: required",
            "chat_channels[2].url: must start with nats://",
            "chat_channels[2].stream: required",
            "chat_channels[2].subject: required",
            "chat_channels[2].chat_url_template: required",
            "chat_channels[3].secret: secret 1 is too short",
            "chat_channels[4].stream: a stream name has no spaces",
            "chat_channels[4].subject: a NATS subject has no spaces",
            "chat_channels[5].subject: '>' stands for the rest",
            "chat.handle_ttl_secs",
            "agents[0].matrix_user_id",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(expected)),
                "missing {expected} in {p:?}"
            );
        }
    }

    #[test]
    fn syntax_errors_name_the_file_and_key() {
        let err = load("[database]\nurll = 1\n", &[]).unwrap_err().to_string();
        assert!(err.contains("test.toml") && err.contains("urll"), "{err}");
        // A wrong type in the second of two services: its line says which.
        let text = "[[services]]\nid = \"a\"\nname = \"A\"\n\n[[services]]\nid = \"b\"\nname = \"B\"\npriority = \"high\"\n";
        let err = load(text, &[]).unwrap_err().to_string();
        assert!(err.contains("line 8") && err.contains("priority"), "{err}");
        // The same mistake from the environment says so.
        let err = load(
            "[[services]]\nid = \"a\"\nname = \"A\"\n",
            &[("SWITCHBOARD_SERVICES_0_PRIORITY", "abc")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("environment variable") && err.contains("(key services[0].priority)"),
            "{err}"
        );
        // A mistake in the file and another from the environment: the
        // environment's is told, not the file's line.
        let err = load(
            "[[services]]\nid = \"a\"\nname = \"A\"\npriority = \"x\"\n",
            &[("SWITCHBOARD_INGEST_BATCH_SIZE", "-5")],
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("line 4"), "{err}");
    }

    #[test]
    fn type_errors_are_told_in_words_with_the_list_index() {
        let text = "[[services]]\nid = \"a\"\nname = \"A\"\n\n[[services]]\nid = \"b\"\nname = \"B\"\npriority = \"high\"\n";
        let err = load(text, &[]).unwrap_err().to_string();
        assert_eq!(
            err,
            "test.toml: line 8, column 12: invalid type: string \"high\", expected a whole number from -2147483648 to 2147483647 (key services[1].priority)"
        );
        let text = format!(
            "{GOOD}\n[[mailboxes]]\nservice = \"support\"\nkind = \"imap\"\nport = 99999\n"
        );
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(
            err.contains("expected a whole number from 0 to 65535 (key mailboxes[0].port)"),
            "{err}"
        );
        let err = load(GOOD, &[("SWITCHBOARD_INGEST_BATCH_SIZE", "-5")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected a whole number of 0 or more (key ingest.batch_size)")
                && err.contains("environment variable"),
            "{err}"
        );
        let err = load(GOOD, &[("SWITCHBOARD_AGENTS_0_ADMIN", "yes")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected true or false (key agents[0].admin)"),
            "{err}"
        );
        for rust in ["i32", "u16", "usize", "bool", "sequence", "map"] {
            assert!(!err.contains(&format!("expected {rust}")), "{err}");
        }
    }
}
