//! Services: the queues customers reach, with their settings.
use super::wrapup::CatalogCode;
use serde::{Deserialize, Serialize};

/// A context link: a label and a URL template with `{placeholders}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextLink {
    pub label: String,
    pub url_template: String,
}

/// Per-modality redirect-on-no-answer timeouts in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RonaTimeouts {
    pub email: u32,
    pub im: u32,
    pub call: u32,
}

impl Default for RonaTimeouts {
    fn default() -> Self {
        RonaTimeouts {
            email: 120,
            im: 30,
            call: 20,
        }
    }
}

/// A service's settings, stored as one JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceSettings {
    pub priority: i32,
    pub rona_timeout_secs: RonaTimeouts,
    pub codes_enabled: bool,
    pub context_links: Vec<ContextLink>,
    /// Days the conversation context is kept after the session; 0 deletes it at once.
    pub keep_context_days: u32,
    /// `drop`, `attach` or `queue` for auto-replies and bounces.
    pub auto_reply_policy: String,
    /// Sending a reply concludes the agent's part (as if marked handled).
    pub conclude_on_send: bool,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            priority: 0,
            rona_timeout_secs: RonaTimeouts::default(),
            codes_enabled: true,
            context_links: Vec::new(),
            keep_context_days: 0,
            auto_reply_policy: "attach".into(),
            conclude_on_send: false,
        }
    }
}

/// A service as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub email_addresses: Vec<String>,
    pub settings: ServiceSettings,
    #[serde(default)]
    pub codes: Vec<CatalogCode>,
}
