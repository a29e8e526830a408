//! Customers: who is on the other end of a task, resolved at arrival.
use serde::{Deserialize, Serialize};

/// Where the customer's identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CustomerKind {
    /// The internal directory (agents and tenant users).
    Internal,
    /// The external address book (contacts imported or upserted by API).
    External,
    /// Nobody matched: only the known address is shown.
    Anonymous,
}

impl CustomerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CustomerKind::Internal => "internal",
            CustomerKind::External => "external",
            CustomerKind::Anonymous => "anonymous",
        }
    }

    pub fn parse(s: &str) -> CustomerKind {
        match s {
            "internal" => CustomerKind::Internal,
            "external" => CustomerKind::External,
            _ => CustomerKind::Anonymous,
        }
    }
}

/// The resolved customer of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerMatch {
    pub kind: CustomerKind,
    /// The agent or contact id that matched, if any.
    pub reference: Option<String>,
    pub name: Option<String>,
    /// The address the customer reached us from (email address, phone number, chat id).
    pub address: Option<String>,
}

/// A candidate found in one directory.
#[derive(Debug, Clone)]
pub struct DirectoryEntry {
    pub id: String,
    pub name: String,
}

/// Normalises an address for matching: emails compare case-insensitively;
/// phone numbers compare on their digits and a leading `+`.
pub fn normalize_address(address: &str) -> String {
    let a = address.trim();
    if a.contains('@') {
        return a.to_lowercase();
    }
    let digits: String = a
        .chars()
        .enumerate()
        .filter(|(i, c)| c.is_ascii_digit() || (*i == 0 && *c == '+'))
        .map(|(_, c)| c)
        .collect();
    if digits.chars().filter(char::is_ascii_digit).count() >= 5 {
        digits
    } else {
        a.to_lowercase()
    }
}

/// Chooses the customer: the internal directory first, then the external address
/// book; otherwise anonymous with the known address (and the name the channel gave, if any).
pub fn resolve(
    address: Option<&str>,
    given_name: Option<&str>,
    internal: Option<DirectoryEntry>,
    external: Option<DirectoryEntry>,
) -> CustomerMatch {
    let address = address
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from);
    let (kind, entry) = match (internal, external) {
        (Some(e), _) => (CustomerKind::Internal, Some(e)),
        (None, Some(e)) => (CustomerKind::External, Some(e)),
        (None, None) => (CustomerKind::Anonymous, None),
    };
    match entry {
        Some(e) => CustomerMatch {
            kind,
            reference: Some(e.id),
            name: Some(e.name),
            address,
        },
        None => CustomerMatch {
            kind,
            reference: None,
            name: given_name
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from),
            address,
        },
    }
}

/// What a channel or an integration knows about a customer at arrival (or
/// later, through "Update task"): any of these may be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CustomerIdentity {
    pub name: Option<String>,
    pub email: Option<String>,
    /// Any usual spelling (`+1 (555) 010-0199`, `00 44 20 7946 0958`); stored in E.164.
    pub phone: Option<String>,
    /// A user principal name or chat user id (`alice@tenant.example`, `@alice:matrix.example`).
    pub upn: Option<String>,
    /// The address the customer reached us from, as the channel gives it
    /// (an e-mail address, a phone number, a chat id).
    pub address: Option<String>,
    /// A postal address (for the map): up to 10 lines (`\n`) and 500
    /// characters; a map or a link takes its lines joined with ", ".
    pub postal_address: Option<String>,
    /// The customer's IP address, where the channel knows it (for the map).
    pub ip: Option<String>,
}

/// A customer's details beyond the name and the address they came from:
/// part of a live task's context, removed when it ends (unless kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CustomerDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
}

impl CustomerDetails {
    /// Fills what is missing here from `other`.
    pub fn fill_from(&mut self, other: &CustomerDetails) {
        let fill = |mine: &mut Option<String>, theirs: &Option<String>| {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        };
        fill(&mut self.email, &other.email);
        fill(&mut self.phone, &other.phone);
        fill(&mut self.upn, &other.upn);
        fill(&mut self.postal_address, &other.postal_address);
        fill(&mut self.ip, &other.ip);
        fill(&mut self.company, &other.company);
    }
}

/// An identity checked and put in the stored form: e-mail and UPN
/// lowercased, phone in E.164, IP parsed. What the lookups match on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NormalIdentity {
    pub name: Option<String>,
    pub address: Option<String>,
    pub details: CustomerDetails,
}

impl NormalIdentity {
    /// A call's customer is reached by phone: where no `address` was
    /// given, a phone number given beside an e-mail address is the address
    /// shown (the e-mail address stays among the details).
    pub fn phone_first(mut self, address_given: bool) -> Self {
        if !address_given && let Some(phone) = &self.details.phone {
            self.address = Some(phone.clone());
        }
        self
    }
}

/// Longest accepted values of the identity's fields.
pub const MAX_NAME: usize = 200;
pub const MAX_EMAIL: usize = 320;
pub const MAX_POSTAL_ADDRESS: usize = 500;
/// Lines of a postal address at most.
pub const MAX_POSTAL_LINES: usize = 10;

/// Whether `s` is written like an e-mail address.
pub fn looks_like_email(s: &str) -> bool {
    s.len() <= MAX_EMAIL
        && s.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
        && !s.contains(char::is_whitespace)
        && !s.contains(char::is_control)
}

fn clean(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from)
}

impl CustomerIdentity {
    /// Checks and normalises the identity. `strict` (an API caller): a bad
    /// field is an error naming `{prefix}.{field}` and the limit. Otherwise
    /// (a channel at arrival): a bad field is dropped, the rest kept.
    pub fn normalize(
        &self,
        default_calling_code: Option<u16>,
        strict: bool,
        prefix: &str,
    ) -> Result<NormalIdentity, super::DomainError> {
        let bad = |field: &str, why: String| {
            super::DomainError::Invalid(format!("{prefix}.{field}: {why}"))
        };
        let mut out = NormalIdentity::default();
        let take = |field: &str,
                    value: &Option<String>,
                    check: &dyn Fn(&str) -> Result<String, String>|
         -> Result<Option<String>, super::DomainError> {
            let Some(v) = clean(value) else {
                return Ok(None);
            };
            match check(&v) {
                Ok(n) => Ok(Some(n)),
                Err(why) if strict => Err(bad(field, why)),
                Err(_) => Ok(None),
            }
        };
        let no_controls = |v: &str, max: usize| -> Result<String, String> {
            if v.chars().count() > max {
                Err(format!("is longer than {max} characters"))
            } else if v.chars().any(char::is_control) {
                Err("contains control characters".into())
            } else {
                Ok(v.to_string())
            }
        };
        // A name shows on one line of the page: direction formatting is
        // taken out (not refused: a channel's event is not lost for it).
        out.name = take("name", &self.name, &|v| {
            no_controls(v, MAX_NAME).map(|mut name| {
                super::text::strip_direction_formatting(&mut name);
                name
            })
        })?
        .filter(|name| !name.trim().is_empty());
        out.details.email = take("email", &self.email, &|v| {
            if looks_like_email(v) {
                Ok(v.to_lowercase())
            } else {
                Err(format!(
                    "is not an e-mail address (at most {MAX_EMAIL} characters, one '@')"
                ))
            }
        })?;
        out.details.phone = take("phone", &self.phone, &|v| {
            super::phone::normalize_phone(v, default_calling_code).map_err(|e| e.to_string())
        })?;
        out.details.upn = take("upn", &self.upn, &|v| {
            no_controls(v, MAX_EMAIL).and_then(|v| {
                if v.contains(char::is_whitespace) {
                    Err("contains spaces".into())
                } else {
                    Ok(v.to_lowercase())
                }
            })
        })?;
        // A postal address may take several lines (kept as `\n`); nothing
        // else that is a control character.
        out.details.postal_address = take("postal_address", &self.postal_address, &|v| {
            let lines: Vec<&str> = v
                .split(['\n', '\r'])
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            if lines.len() > MAX_POSTAL_LINES {
                return Err(format!("has more than {MAX_POSTAL_LINES} lines"));
            }
            no_controls(&lines.join("\n").replace('\n', " "), MAX_POSTAL_ADDRESS)?;
            Ok(lines.join("\n"))
        })?;
        out.details.ip = take("ip", &self.ip, &|v| {
            v.parse::<std::net::IpAddr>()
                .map(|ip| ip.to_string())
                .map_err(|_| "is not an IPv4 or IPv6 address".to_string())
        })?;
        out.address = take("address", &self.address, &|v| no_controls(v, MAX_EMAIL))?;
        // The channel's address says what it is: an e-mail address or a phone number.
        if let Some(a) = &out.address {
            if out.details.email.is_none() && looks_like_email(a) {
                out.details.email = Some(a.to_lowercase());
            } else if out.details.phone.is_none() && super::phone::looks_like_phone(a) {
                out.details.phone = super::phone::normalize_phone(a, default_calling_code).ok();
            }
        }
        if out.address.is_none() {
            out.address = out
                .details
                .email
                .clone()
                .or_else(|| out.details.phone.clone())
                .or_else(|| out.details.upn.clone());
        }
        Ok(out)
    }
}

/// A change to one customer field ("Update task"): leave it, clear it
/// (given as an empty text), or set it (checked and normalised).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FieldUpdate {
    #[default]
    Keep,
    Clear,
    Set(String),
}

impl FieldUpdate {
    pub fn apply(&self, current: &mut Option<String>) {
        match self {
            FieldUpdate::Keep => {}
            FieldUpdate::Clear => *current = None,
            FieldUpdate::Set(v) => *current = Some(v.clone()),
        }
    }

    pub fn is_keep(&self) -> bool {
        *self == FieldUpdate::Keep
    }
}

/// The customer fields an integration sets on a live task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerUpdate {
    pub name: FieldUpdate,
    pub email: FieldUpdate,
    pub phone: FieldUpdate,
    pub upn: FieldUpdate,
    pub postal_address: FieldUpdate,
    pub ip: FieldUpdate,
}

impl CustomerUpdate {
    /// From the fields given (`address` cannot change: it is where the
    /// customer came from). Errors name `{prefix}.{field}` and the limit.
    pub fn from_identity(
        given: &CustomerIdentity,
        default_calling_code: Option<u16>,
        prefix: &str,
    ) -> Result<CustomerUpdate, super::DomainError> {
        if given.address.is_some() {
            return Err(super::DomainError::Invalid(format!(
                "{prefix}.address: cannot change: it is where the customer came from (set email, phone or upn)"
            )));
        }
        let one = |value: &Option<String>,
                   make: &dyn Fn(String) -> CustomerIdentity,
                   pick: &dyn Fn(&NormalIdentity) -> Option<String>|
         -> Result<FieldUpdate, super::DomainError> {
            match value.as_deref().map(str::trim) {
                None => Ok(FieldUpdate::Keep),
                Some("") => Ok(FieldUpdate::Clear),
                Some(v) => {
                    let n = make(v.to_string()).normalize(default_calling_code, true, prefix)?;
                    Ok(pick(&n).map_or(FieldUpdate::Clear, FieldUpdate::Set))
                }
            }
        };
        let none = CustomerIdentity::default;
        Ok(CustomerUpdate {
            name: one(
                &given.name,
                &|v| CustomerIdentity {
                    name: Some(v),
                    ..none()
                },
                &|n| n.name.clone(),
            )?,
            email: one(
                &given.email,
                &|v| CustomerIdentity {
                    email: Some(v),
                    ..none()
                },
                &|n| n.details.email.clone(),
            )?,
            phone: one(
                &given.phone,
                &|v| CustomerIdentity {
                    phone: Some(v),
                    ..none()
                },
                &|n| n.details.phone.clone(),
            )?,
            upn: one(
                &given.upn,
                &|v| CustomerIdentity {
                    upn: Some(v),
                    ..none()
                },
                &|n| n.details.upn.clone(),
            )?,
            postal_address: one(
                &given.postal_address,
                &|v| CustomerIdentity {
                    postal_address: Some(v),
                    ..none()
                },
                &|n| n.details.postal_address.clone(),
            )?,
            ip: one(
                &given.ip,
                &|v| CustomerIdentity {
                    ip: Some(v),
                    ..none()
                },
                &|n| n.details.ip.clone(),
            )?,
        })
    }

    /// The names of the fields it changes.
    pub fn changed(&self) -> Vec<&'static str> {
        [
            ("name", &self.name),
            ("email", &self.email),
            ("phone", &self.phone),
            ("upn", &self.upn),
            ("postal_address", &self.postal_address),
            ("ip", &self.ip),
        ]
        .into_iter()
        .filter(|(_, u)| !u.is_keep())
        .map(|(n, _)| n)
        .collect()
    }

    /// Applies the update to a task's details.
    pub fn apply_details(&self, details: &mut CustomerDetails) {
        self.email.apply(&mut details.email);
        self.phone.apply(&mut details.phone);
        self.upn.apply(&mut details.upn);
        self.postal_address.apply(&mut details.postal_address);
        self.ip.apply(&mut details.ip);
    }
}

/// An entry of the internal directory or the address book that matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryMatch {
    pub id: String,
    pub name: String,
    pub details: CustomerDetails,
}

/// A customer resolved at arrival: who (kind, reference, name, address) and
/// what else is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedCustomer {
    pub matched: CustomerMatch,
    pub details: CustomerDetails,
}

/// Chooses the customer for a normalised identity: the internal directory
/// first, then the address book; otherwise anonymous with the known details.
/// The known details stay; the entry's fill what is missing.
pub fn resolve_identity(
    identity: &NormalIdentity,
    internal: Option<DirectoryMatch>,
    external: Option<DirectoryMatch>,
) -> ResolvedCustomer {
    let (kind, entry) = match (internal, external) {
        (Some(e), _) => (CustomerKind::Internal, Some(e)),
        (None, Some(e)) => (CustomerKind::External, Some(e)),
        (None, None) => (CustomerKind::Anonymous, None),
    };
    let mut details = identity.details.clone();
    match entry {
        Some(e) => {
            details.fill_from(&e.details);
            ResolvedCustomer {
                matched: CustomerMatch {
                    kind,
                    reference: Some(e.id),
                    name: Some(e.name),
                    address: identity.address.clone(),
                },
                details,
            }
        }
        None => ResolvedCustomer {
            matched: CustomerMatch {
                kind,
                reference: None,
                name: identity.name.clone(),
                address: identity.address.clone(),
            },
            details,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Option<DirectoryEntry> {
        Some(DirectoryEntry {
            id: id.into(),
            name: format!("Name {id}"),
        })
    }

    #[test]
    fn internal_wins_over_external() {
        let m = resolve(Some("a@x.com"), None, entry("alice"), entry("c1"));
        assert_eq!(m.kind, CustomerKind::Internal);
        assert_eq!(m.reference.as_deref(), Some("alice"));
        let m = resolve(Some("a@x.com"), None, None, entry("c1"));
        assert_eq!(m.kind, CustomerKind::External);
    }

    #[test]
    fn anonymous_keeps_the_address() {
        let m = resolve(Some(" +1 555 0100 "), Some("Caller"), None, None);
        assert_eq!(m.kind, CustomerKind::Anonymous);
        assert_eq!(m.address.as_deref(), Some("+1 555 0100"));
        assert_eq!(m.name.as_deref(), Some("Caller"));
    }

    #[test]
    fn addresses_normalise() {
        assert_eq!(normalize_address(" Bob@Example.COM "), "bob@example.com");
        assert_eq!(normalize_address("+1 (555) 010-0200"), "+15550100200");
        assert_eq!(normalize_address("chat:XYZ"), "chat:xyz");
    }

    #[test]
    fn an_address_says_whether_it_is_an_email_or_a_phone() {
        let id = CustomerIdentity {
            address: Some(" +41 44 000 00 00 ".into()),
            ..Default::default()
        };
        let n = id.normalize(None, true, "customer").unwrap();
        assert_eq!(n.details.phone.as_deref(), Some("+41440000000"));
        assert_eq!(n.address.as_deref(), Some("+41 44 000 00 00"));
        let id = CustomerIdentity {
            address: Some("Bob@Example.COM".into()),
            ..Default::default()
        };
        let n = id.normalize(None, true, "customer").unwrap();
        assert_eq!(n.details.email.as_deref(), Some("bob@example.com"));
        // A chat id is neither: only the address.
        let id = CustomerIdentity {
            address: Some("chat:xyz".into()),
            ..Default::default()
        };
        let n = id.normalize(None, true, "customer").unwrap();
        assert_eq!(n.details, CustomerDetails::default());
    }

    #[test]
    fn a_postal_address_may_take_several_lines() {
        let given = |v: &str| CustomerIdentity {
            postal_address: Some(v.into()),
            ..Default::default()
        };
        let n = given(" Bahnhofstrasse 1 \r\n8001 Zürich\r\n\r\nSwitzerland\n")
            .normalize(None, true, "customer")
            .unwrap();
        assert_eq!(
            n.details.postal_address.as_deref(),
            Some("Bahnhofstrasse 1\n8001 Zürich\nSwitzerland")
        );
        let err = given("Bahnhofstrasse\t1")
            .normalize(None, true, "customer")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "customer.postal_address: contains control characters");
        let err = given(&"line\n".repeat(MAX_POSTAL_LINES + 1))
            .normalize(None, true, "customer")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "customer.postal_address: has more than 10 lines");
    }

    #[test]
    fn strict_identities_name_the_bad_field_and_lenient_ones_drop_it() {
        let id = CustomerIdentity {
            phone: Some("12".into()),
            email: Some("ok@example.com".into()),
            ip: Some("not-an-ip".into()),
            ..Default::default()
        };
        let err = id
            .normalize(None, true, "customer")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("customer.phone: "), "{err}");
        assert!(err.contains("6 to 15"), "{err}");
        let n = id.normalize(None, false, "customer").unwrap();
        assert_eq!(n.details.phone, None);
        assert_eq!(n.details.ip, None);
        assert_eq!(n.details.email.as_deref(), Some("ok@example.com"));
        let long = CustomerIdentity {
            name: Some("x".repeat(201)),
            ..Default::default()
        };
        let err = long.normalize(None, true, "c").unwrap_err().to_string();
        assert_eq!(err, "c.name: is longer than 200 characters");
    }

    #[test]
    fn names_lose_direction_formatting() {
        let id = CustomerIdentity {
            name: Some("Eve \u{202E}gnp.exe".into()),
            ..Default::default()
        };
        let n = id.normalize(None, true, "customer").unwrap();
        assert_eq!(n.name.as_deref(), Some("Eve gnp.exe"));
        let only = CustomerIdentity {
            name: Some("\u{202E}\u{2066}".into()),
            email: Some("eve@example.com".into()),
            ..Default::default()
        };
        let n = only.normalize(None, true, "customer").unwrap();
        assert_eq!(n.name, None);
    }

    #[test]
    fn a_match_fills_in_what_the_channel_did_not_know() {
        let id = CustomerIdentity {
            phone: Some("+41 44 000 00 00".into()),
            name: Some("Caller".into()),
            ..Default::default()
        }
        .normalize(None, true, "customer")
        .unwrap();
        let entry = DirectoryMatch {
            id: "u1".into(),
            name: "Ursula".into(),
            details: CustomerDetails {
                email: Some("ursula@corp.example".into()),
                phone: Some("+41449999999".into()),
                ..Default::default()
            },
        };
        let r = resolve_identity(&id, Some(entry.clone()), None);
        assert_eq!(r.matched.kind, CustomerKind::Internal);
        assert_eq!(r.matched.name.as_deref(), Some("Ursula"));
        assert_eq!(r.details.email.as_deref(), Some("ursula@corp.example"));
        // The number that called stays the one shown.
        assert_eq!(r.details.phone.as_deref(), Some("+41440000000"));
        let r = resolve_identity(&id, None, Some(entry));
        assert_eq!(r.matched.kind, CustomerKind::External);
        let r = resolve_identity(&id, None, None);
        assert_eq!(r.matched.kind, CustomerKind::Anonymous);
        assert_eq!(r.matched.name.as_deref(), Some("Caller"));
        assert_eq!(r.matched.address.as_deref(), Some("+41440000000"));
    }

    #[test]
    fn updates_keep_clear_or_set_each_field() {
        let given = CustomerIdentity {
            name: Some("John Doe".into()),
            phone: Some("0041 44 000 00 00".into()),
            email: Some("".into()),
            ..Default::default()
        };
        let u = CustomerUpdate::from_identity(&given, None, "customer").unwrap();
        assert_eq!(u.name, FieldUpdate::Set("John Doe".into()));
        assert_eq!(u.phone, FieldUpdate::Set("+41440000000".into()));
        assert_eq!(u.email, FieldUpdate::Clear);
        assert_eq!(u.upn, FieldUpdate::Keep);
        assert_eq!(u.changed(), vec!["name", "email", "phone"]);
        let mut d = CustomerDetails {
            email: Some("old@example.com".into()),
            upn: Some("u@x".into()),
            ..Default::default()
        };
        u.apply_details(&mut d);
        assert_eq!(d.email, None);
        assert_eq!(d.upn.as_deref(), Some("u@x"));
        assert_eq!(d.phone.as_deref(), Some("+41440000000"));
        let bad = CustomerIdentity {
            ip: Some("999.1.1.1".into()),
            ..Default::default()
        };
        let err = CustomerUpdate::from_identity(&bad, None, "customer")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("customer.ip: "), "{err}");
        let addr = CustomerIdentity {
            address: Some("x@y.z".into()),
            ..Default::default()
        };
        assert!(CustomerUpdate::from_identity(&addr, None, "customer").is_err());
    }

    #[test]
    fn a_call_shows_the_phone_given_beside_an_email() {
        let id = CustomerIdentity {
            email: Some("Ann@Example.com".into()),
            phone: Some("+41 44 111 22 33".into()),
            ..Default::default()
        };
        let n = id.normalize(None, true, "customer").unwrap();
        assert_eq!(n.address.as_deref(), Some("ann@example.com"));
        let call = n.clone().phone_first(false);
        assert_eq!(call.address.as_deref(), Some("+41441112233"));
        assert_eq!(call.details.email.as_deref(), Some("ann@example.com"));
        // An address given is where the customer came from: kept.
        let given = CustomerIdentity {
            address: Some("ann@example.com".into()),
            phone: Some("+41 44 111 22 33".into()),
            ..Default::default()
        }
        .normalize(None, true, "customer")
        .unwrap()
        .phone_first(true);
        assert_eq!(given.address.as_deref(), Some("ann@example.com"));
    }
}
