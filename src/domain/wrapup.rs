//! Wrap-up: codes from the service's catalog and free-text tags.
use super::DomainError;
use serde::{Deserialize, Serialize};

pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_LEN: usize = 64;
pub const MAX_CODES: usize = 10;

/// Where a code of the catalog may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CodeKind {
    Primary,
    Secondary,
    /// Usable as primary or secondary.
    #[default]
    Any,
}

impl CodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CodeKind::Primary => "primary",
            CodeKind::Secondary => "secondary",
            CodeKind::Any => "any",
        }
    }

    pub fn parse(s: &str) -> Result<Self, DomainError> {
        match s {
            "primary" => Ok(CodeKind::Primary),
            "secondary" => Ok(CodeKind::Secondary),
            "any" => Ok(CodeKind::Any),
            other => Err(DomainError::Invalid(format!(
                "unknown code kind '{other}': expected primary, secondary or any"
            ))),
        }
    }

    fn allows(self, slot: CodeKind) -> bool {
        self == CodeKind::Any || self == slot
    }
}

/// One entry of a service's code catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CatalogCode {
    pub code: String,
    pub label: String,
    /// Where the code may be used: primary, secondary or either.
    #[serde(default)]
    pub kind: CodeKind,
    /// Retired codes stay so saved sessions keep their meaning.
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// Codes picked by the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WrapUpCodes {
    #[serde(default)]
    pub primary: Vec<String>,
    #[serde(default)]
    pub secondary: Vec<String>,
}

/// A session's wrap-up as the agent wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WrapUp {
    #[serde(default)]
    pub codes: WrapUpCodes,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl WrapUp {
    /// A short fingerprint of these codes and tags (the wrap-up's `ETag`): a
    /// change made meanwhile elsewhere (another tab) is told from one's own.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for list in [&self.codes.primary, &self.codes.secondary, &self.tags] {
            for item in list {
                h.update((item.len() as u64).to_be_bytes());
                h.update(item.as_bytes());
            }
            h.update([0xff]);
        }
        hex::encode(&h.finalize()[..12])
    }

    /// Checks the wrap-up against the service's catalog and normalises tags
    /// (trimmed, duplicates removed, order kept). `codes_enabled` is the service's setting.
    /// `kept`: the codes the session has now; one of them that was retired
    /// since it was picked may stay (the agent edits the rest around it),
    /// but a retired code cannot be picked anew.
    pub fn validated(
        mut self,
        catalog: &[CatalogCode],
        codes_enabled: bool,
        kept: &WrapUpCodes,
    ) -> Result<WrapUp, DomainError> {
        let picked = self.codes.primary.len() + self.codes.secondary.len();
        if !codes_enabled && picked > 0 {
            return Err(DomainError::Invalid(
                "codes are not enabled for this service".into(),
            ));
        }
        for (slot, codes, had) in [
            (CodeKind::Primary, &self.codes.primary, &kept.primary),
            (CodeKind::Secondary, &self.codes.secondary, &kept.secondary),
        ] {
            if codes.len() > MAX_CODES {
                return Err(DomainError::Invalid(format!(
                    "at most {MAX_CODES} {} codes",
                    slot.as_str()
                )));
            }
            for code in codes {
                let entry = match catalog.iter().find(|c| &c.code == code) {
                    Some(entry) if entry.active => entry,
                    // Picked before it was retired: kept as it was checked then.
                    _ if had.contains(code) => continue,
                    Some(_) => {
                        return Err(DomainError::Invalid(format!(
                            "codes.{}: '{code}' was retired from this service's code catalog: pick another",
                            slot.as_str()
                        )));
                    }
                    None => {
                        return Err(DomainError::Invalid(format!(
                            "codes.{}: '{}' is not in this service's code catalog",
                            slot.as_str(),
                            shown(code)
                        )));
                    }
                };
                if !entry.kind.allows(slot) {
                    return Err(DomainError::Invalid(format!(
                        "codes.{}: '{code}' is a {} code",
                        slot.as_str(),
                        entry.kind.as_str()
                    )));
                }
            }
        }
        dedup(&mut self.codes.primary);
        dedup(&mut self.codes.secondary);
        // Duplicates and empty tags are forgiven, but not without bound.
        if self.tags.len() > MAX_TAGS * 10 {
            return Err(DomainError::Invalid(format!(
                "tags: at most {MAX_TAGS} tags (this list has {} entries)",
                self.tags.len()
            )));
        }
        let mut tags = Vec::with_capacity(self.tags.len());
        for tag in self.tags {
            let tag = tag.trim().to_string();
            if tag.is_empty() {
                continue;
            }
            if tag.chars().count() > MAX_TAG_LEN {
                return Err(DomainError::Invalid(format!(
                    "tags: '{}' is longer than {MAX_TAG_LEN} characters",
                    shown(&tag)
                )));
            }
            if tag.chars().any(char::is_control) {
                return Err(DomainError::Invalid(
                    "tags: control characters are not allowed".into(),
                ));
            }
            // A tag shows on one line beside others: no override or
            // embedding may reverse what follows it (marks are fine).
            if tag
                .chars()
                .any(crate::domain::text::is_direction_formatting)
            {
                return Err(DomainError::Invalid(
                    "tags: text-direction overrides, embeddings and isolates (U+202A–U+202E, U+2066–U+2069) are not allowed"
                        .into(),
                ));
            }
            // One tag whatever its case (search finds both the same): the
            // first spelling given is kept.
            if !tags
                .iter()
                .any(|t: &String| t.to_lowercase() == tag.to_lowercase())
            {
                tags.push(tag);
            }
        }
        if tags.len() > MAX_TAGS {
            return Err(DomainError::Invalid(format!(
                "tags: at most {MAX_TAGS} tags ({} given)",
                tags.len()
            )));
        }
        self.tags = tags;
        Ok(self)
    }
}

/// A value as an error message may show it: at most 40 characters.
fn shown(value: &str) -> String {
    const MAX: usize = 40;
    if value.chars().count() <= MAX {
        value.to_string()
    } else {
        let cut: String = value.chars().take(MAX).collect();
        format!("{cut}… ({} characters)", value.chars().count())
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = Vec::with_capacity(v.len());
    v.retain(|c| {
        if seen.contains(c) {
            false
        } else {
            seen.push(c.clone());
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_echo_a_huge_value() {
        let long = "x".repeat(100_000);
        let e = wrapup(&[], &[], &[long.as_str()])
            .validated(&catalog(), true, &WrapUpCodes::default())
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200 && e.contains("longer than 64"), "{e}");
        let e = wrapup(&[long.as_str()], &[], &[])
            .validated(&catalog(), true, &WrapUpCodes::default())
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200 && e.contains("not in this service"), "{e}");
        let many: Vec<String> = (0..1_000_000).map(|i| i.to_string()).collect();
        let w = WrapUp {
            codes: WrapUpCodes::default(),
            tags: many,
        };
        let e = w
            .validated(&catalog(), true, &WrapUpCodes::default())
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200 && e.contains("at most 20 tags"), "{e}");
    }

    fn catalog() -> Vec<CatalogCode> {
        vec![
            CatalogCode {
                code: "billing".into(),
                label: "Billing".into(),
                kind: CodeKind::Primary,
                active: true,
            },
            CatalogCode {
                code: "vip".into(),
                label: "VIP".into(),
                kind: CodeKind::Any,
                active: true,
            },
            CatalogCode {
                code: "old".into(),
                label: "Retired".into(),
                kind: CodeKind::Any,
                active: false,
            },
        ]
    }

    #[test]
    fn tags_refuse_direction_overrides_and_keep_marks() {
        let err = wrapup(&[], &[], &["\u{202e}gnp.exe"])
            .validated(&catalog(), true, &WrapUpCodes::default())
            .unwrap_err();
        assert!(err.to_string().contains("tags: text-direction"), "{err}");
        // Hebrew with a right-to-left mark is a fine tag.
        let ok = wrapup(&[], &[], &["\u{5e9}\u{5dc}\u{5d5}\u{5dd}\u{200f}"]).validated(
            &catalog(),
            true,
            &WrapUpCodes::default(),
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    fn wrapup(primary: &[&str], secondary: &[&str], tags: &[&str]) -> WrapUp {
        WrapUp {
            codes: WrapUpCodes {
                primary: primary.iter().map(|s| s.to_string()).collect(),
                secondary: secondary.iter().map(|s| s.to_string()).collect(),
            },
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn catalog_codes_are_accepted_and_tags_normalised() {
        let w = wrapup(
            &["billing"],
            &["vip"],
            &[
                " refund ", "refund", "", "urgent", "Refund", "URGENT", "VIP",
            ],
        )
        .validated(&catalog(), true, &WrapUpCodes::default())
        .unwrap();
        assert_eq!(w.tags, vec!["refund", "urgent", "VIP"]);
        assert_eq!(w.codes.primary, vec!["billing"]);
    }

    #[test]
    fn unknown_retired_and_misplaced_codes_are_refused() {
        let err = wrapup(&["nope"], &[], &[])
            .validated(&catalog(), true, &WrapUpCodes::default())
            .unwrap_err();
        assert!(err.to_string().contains("'nope' is not in"), "{err}");
        let err = wrapup(&["old"], &[], &[])
            .validated(&catalog(), true, &WrapUpCodes::default())
            .unwrap_err();
        assert!(err.to_string().contains("'old' was retired"), "{err}");
        // Picked before it was retired: it stays while the rest changes,
        // in its own slot only.
        let had = wrapup(&["old"], &[], &[]).codes;
        let kept = wrapup(&["old"], &[], &["late"]).validated(&catalog(), true, &had);
        assert!(kept.is_ok(), "{kept:?}");
        assert!(
            wrapup(&[], &["old"], &[])
                .validated(&catalog(), true, &had)
                .is_err()
        );
        let err = wrapup(&[], &["billing"], &[])
            .validated(&catalog(), true, &WrapUpCodes::default())
            .unwrap_err();
        assert!(err.to_string().contains("is a primary code"), "{err}");
    }

    #[test]
    fn codes_need_the_service_setting() {
        assert!(
            wrapup(&["billing"], &[], &[])
                .validated(&catalog(), false, &WrapUpCodes::default())
                .is_err()
        );
        assert!(
            wrapup(&[], &[], &["x"])
                .validated(&catalog(), false, &WrapUpCodes::default())
                .is_ok()
        );
    }

    #[test]
    fn tags_are_bounded() {
        let long = "x".repeat(MAX_TAG_LEN + 1);
        assert!(
            wrapup(&[], &[], &[&long])
                .validated(&[], true, &WrapUpCodes::default())
                .is_err()
        );
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(
            wrapup(&[], &[], &refs)
                .validated(&[], true, &WrapUpCodes::default())
                .is_err()
        );
    }

    #[test]
    fn fingerprints_tell_wrapups_apart() {
        let a = WrapUp {
            codes: WrapUpCodes {
                primary: vec!["billing".into()],
                secondary: vec![],
            },
            tags: vec!["a".into(), "b".into()],
        };
        let mut b = a.clone();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.tags = vec!["a,b".into()];
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.codes.secondary = vec!["billing".into()];
        c.codes.primary = vec![];
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
