//! Services: the queues customers reach, with their settings.
use super::wrapup::CatalogCode;
use serde::{Deserialize, Serialize};

/// A context item: a label and a URL template with `$(placeholders)`
/// (see [`super::context`]).
pub use super::context::ContextLink;

/// Per-modality redirect-on-no-answer timeouts in seconds. Written as one
/// number for every modality (`30`) or per modality (`{ call = 20, email = 120 }`,
/// the others keeping the default of 30).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RonaTimeouts {
    pub email: u32,
    pub im: u32,
    pub call: u32,
}

/// The default offer timeout, seconds.
pub const DEFAULT_RONA_TIMEOUT_SECS: u32 = 30;

impl Default for RonaTimeouts {
    fn default() -> Self {
        RonaTimeouts::all(DEFAULT_RONA_TIMEOUT_SECS)
    }
}

impl RonaTimeouts {
    pub fn all(secs: u32) -> Self {
        RonaTimeouts {
            email: secs,
            im: secs,
            call: secs,
        }
    }

    /// Checks every timeout is 1 s to 1 day.
    pub fn check(&self) -> Result<(), super::DomainError> {
        match self.problems().into_iter().next() {
            Some((key, message)) => Err(super::DomainError::Invalid(format!("{key}: {message}"))),
            None => Ok(()),
        }
    }

    /// Every timeout out of range, each with its key
    /// (`rona_timeout_secs.email`) and what is wrong.
    pub fn problems(&self) -> Vec<(String, String)> {
        [("email", self.email), ("im", self.im), ("call", self.call)]
            .into_iter()
            .filter(|(_, v)| !(1..=86_400).contains(v))
            .map(|(m, v)| {
                (
                    format!("rona_timeout_secs.{m}"),
                    format!("{v} is out of range: use 1 to 86400 seconds"),
                )
            })
            .collect()
    }
}

/// One number, or a table of the modalities it sets.
#[derive(Deserialize)]
#[serde(untagged)]
enum RonaTimeoutsInput {
    All(u32),
    Each(RonaTimeoutsEach),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RonaTimeoutsEach {
    email: Option<u32>,
    im: Option<u32>,
    call: Option<u32>,
}

impl<'de> Deserialize<'de> for RonaTimeouts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RonaTimeoutsInput::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "rona_timeout_secs must be a number of seconds or a table of email, im and call",
            )
        })? {
            RonaTimeoutsInput::All(n) => Ok(RonaTimeouts::all(n)),
            RonaTimeoutsInput::Each(e) => Ok(RonaTimeouts {
                email: e.email.unwrap_or(DEFAULT_RONA_TIMEOUT_SECS),
                im: e.im.unwrap_or(DEFAULT_RONA_TIMEOUT_SECS),
                call: e.call.unwrap_or(DEFAULT_RONA_TIMEOUT_SECS),
            }),
        }
    }
}

/// A service's settings, stored as one JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct ServiceSettings {
    pub priority: i32,
    pub rona_timeout_secs: RonaTimeouts,
    pub codes_enabled: bool,
    pub context_links: Vec<ContextLink>,
    /// Days the conversation context is kept after the session (at most
    /// 30); 0 deletes it at once.
    pub keep_context_days: u32,
    /// `drop`, `attach` or `queue` for auto-replies and bounces.
    pub auto_reply_policy: String,
    /// Sending a reply concludes the agent's part (as if marked handled).
    pub conclude_on_send: bool,
    /// How tasks reach agents.
    pub distribution: super::routing::Distribution,
    /// Agents offered a task at once under `broadcast`.
    pub broadcast_size: u32,
    /// After a RONA the agent gets no offer for this long (or until they set
    /// themselves available again).
    pub rona_reset_secs: u32,
    /// After this many RONAs a task goes to `overflow_service` (unlimited when unset).
    pub max_ronas: Option<u32>,
    pub overflow_service: Option<String>,
    /// The capacity of member agents who set none for a modality.
    pub capacity: CapacityDefaults,
}

/// Tasks of each modality an agent handles at once, where set: a service's
/// default for its agents, or an agent's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CapacityDefaults {
    pub email: Option<u32>,
    pub im: Option<u32>,
    pub call: Option<u32>,
}

impl CapacityDefaults {
    /// An agent's own capacity (`self`) where set, else the smallest default
    /// of their services that set one, modality by modality. What stays
    /// unset takes the global default.
    pub fn or_smallest_of<'a>(
        self,
        services: impl IntoIterator<Item = &'a CapacityDefaults>,
    ) -> CapacityDefaults {
        let services: Vec<&CapacityDefaults> = services.into_iter().collect();
        let smallest = |pick: fn(&CapacityDefaults) -> Option<u32>| {
            services.iter().filter_map(|s| pick(s)).min()
        };
        CapacityDefaults {
            email: self.email.or_else(|| smallest(|c| c.email)),
            im: self.im.or_else(|| smallest(|c| c.im)),
            call: self.call.or_else(|| smallest(|c| c.call)),
        }
    }
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
            distribution: super::routing::Distribution::default(),
            broadcast_size: DEFAULT_BROADCAST_SIZE,
            rona_reset_secs: DEFAULT_RONA_RESET_SECS,
            max_ronas: None,
            overflow_service: None,
            capacity: CapacityDefaults::default(),
        }
    }
}

pub const DEFAULT_BROADCAST_SIZE: u32 = 10;
/// The longest a service may keep conversation context after a session.
pub const MAX_KEEP_CONTEXT_DAYS: u32 = 30;
pub const DEFAULT_RONA_RESET_SECS: u32 = 600;

impl ServiceSettings {
    /// Checks the routing settings of service `id` (`overflow_service` is
    /// checked against the directory by the caller): the first mistake.
    pub fn check_routing(&self, id: &str) -> Result<(), super::DomainError> {
        match self.routing_problems(id).into_iter().next() {
            Some((key, message)) => Err(super::DomainError::Invalid(format!("{key}: {message}"))),
            None => Ok(()),
        }
    }

    /// Every mistake in the routing settings of service `id`, each with the
    /// field it concerns (`broadcast_size`, `rona_timeout_secs.email`) and
    /// what is wrong, so a configuration check can list them all.
    pub fn routing_problems(&self, id: &str) -> Vec<(String, String)> {
        let mut out = self.rona_timeout_secs.problems();
        if !(1..=100).contains(&self.broadcast_size) {
            out.push((
                "broadcast_size".into(),
                format!("{} is out of range: use 1 to 100", self.broadcast_size),
            ));
        }
        if self.rona_reset_secs > 86_400 {
            out.push((
                "rona_reset_secs".into(),
                format!(
                    "{} is out of range: use 0 to 86400 (seconds)",
                    self.rona_reset_secs
                ),
            ));
        }
        if self.max_ronas == Some(0) {
            out.push((
                "max_ronas".into(),
                "0 is out of range: use 1 or more, or leave it out for no limit".into(),
            ));
        }
        if self.overflow_service.as_deref() == Some(id) {
            out.push((
                "overflow_service".into(),
                "a service cannot overflow into itself".into(),
            ));
        }
        out
    }
}

/// A service as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Service {
    pub id: String,
    pub name: String,
    /// The service's own addresses: never reply recipients.
    pub email_addresses: Vec<String>,
    pub settings: ServiceSettings,
    #[serde(default)]
    pub codes: Vec<CatalogCode>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rona_timeouts_read_a_number_or_a_table() {
        let all: RonaTimeouts = serde_json::from_str("20").unwrap();
        assert_eq!(all, RonaTimeouts::all(20));
        let some: RonaTimeouts = serde_json::from_str(r#"{"call": 20, "email": 120}"#).unwrap();
        assert_eq!(
            some,
            RonaTimeouts {
                email: 120,
                im: 30,
                call: 20
            }
        );
        let err = serde_json::from_str::<RonaTimeouts>(r#"{"fax": 1}"#).unwrap_err();
        assert!(err.to_string().contains("rona_timeout_secs"), "{err}");
        assert!(RonaTimeouts::all(0).check().is_err());
    }

    #[test]
    fn settings_written_before_routing_still_read() {
        let old = r#"{"priority":1,"rona_timeout_secs":{"email":120,"im":30,"call":20},"codes_enabled":true}"#;
        let s: ServiceSettings = serde_json::from_str(old).unwrap();
        assert_eq!(
            s.distribution,
            crate::domain::routing::Distribution::LongestIdle
        );
        assert_eq!(s.broadcast_size, 10);
        assert_eq!(s.rona_timeout_secs.email, 120);
    }

    #[test]
    fn routing_settings_are_checked() {
        let mut s = ServiceSettings::default();
        assert!(s.check_routing("a").is_ok());
        s.overflow_service = Some("a".into());
        assert!(s.check_routing("a").is_err());
        s.overflow_service = None;
        s.broadcast_size = 0;
        assert!(s.check_routing("a").is_err());
        // Every mistake is told, each with its field.
        s.max_ronas = Some(0);
        s.rona_timeout_secs.call = 0;
        let keys: Vec<String> = s
            .routing_problems("a")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            ["rona_timeout_secs.call", "broadcast_size", "max_ronas"]
        );
    }

    #[test]
    fn an_agent_takes_the_smallest_service_default_where_they_set_none() {
        let own = CapacityDefaults {
            email: Some(5),
            ..Default::default()
        };
        let a = CapacityDefaults {
            email: Some(1),
            im: Some(4),
            call: None,
        };
        let b = CapacityDefaults {
            email: None,
            im: Some(2),
            call: None,
        };
        assert_eq!(
            own.or_smallest_of([&a, &b]),
            CapacityDefaults {
                email: Some(5),
                im: Some(2),
                call: None
            }
        );
        assert_eq!(
            CapacityDefaults::default().or_smallest_of([]),
            CapacityDefaults::default()
        );
    }
}
