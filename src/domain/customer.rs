//! Customers: who is on the other end of a task, resolved at arrival.
use serde::{Deserialize, Serialize};

/// Where the customer's identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}
