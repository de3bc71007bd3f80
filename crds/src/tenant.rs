//! Tenant identity: the one place that decides what a valid tenant id is.
//!
//! A tenant id ends up in HTTP headers, host names, Redis keys and Kubernetes object names, so it
//! is the strictest of those: a lowercase DNS label of at most [`TENANT_ID_MAX_LEN`] characters.
//! The same rule is enforced by the API server (the CEL rule built from [`TENANT_ID_PATTERN`])
//! and by every binary through [`TenantId::parse`].

use std::{borrow::Borrow, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Longest tenant id accepted. Short enough to leave room in a host name label and a Redis key.
pub const TENANT_ID_MAX_LEN: usize = 40;

/// RE2/ECMA pattern of a valid tenant id, used in the CRD schema's CEL rules.
pub const TENANT_ID_PATTERN: &str = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$";

/// What a person should read when an id is refused.
pub const TENANT_ID_RULE: &str = "a tenant id is 1-40 characters of lowercase letters, digits and '-', starting and ending with a letter or digit (for example 'acme-prod')";

/// Why a string is not a tenant id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantIdError {
    #[error("tenant id is empty: {TENANT_ID_RULE}")]
    Empty,
    #[error("tenant id is {len} characters long, more than {TENANT_ID_MAX_LEN}: {TENANT_ID_RULE}")]
    TooLong { len: usize },
    #[error("tenant id contains {found:?} at position {position}: {TENANT_ID_RULE}")]
    InvalidCharacter { found: char, position: usize },
    #[error("tenant id must start and end with a letter or digit, not '-': {TENANT_ID_RULE}")]
    EdgeHyphen,
}

/// A validated tenant id. Construct it with [`TenantId::parse`]; it cannot hold an invalid id.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// Checks `raw` against the tenant-id rules and returns it as a [`TenantId`].
    pub fn parse(raw: &str) -> Result<Self, TenantIdError> {
        validate(raw)?;
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Checks `raw` against the tenant-id rules without allocating.
pub fn validate(raw: &str) -> Result<(), TenantIdError> {
    // A router checks every id of a routing table it decodes (a million, in a large one), so a
    // valid id — the common case — is accepted in one pass over its bytes, without a branch
    // per byte: with `||` and `all`, ids that mix letters and digits at random (UUIDs) cost a
    // mispredicted branch every other byte. An id all of whose bytes are allowed is ASCII, so
    // its length in bytes is its length in characters. Any other id goes through the checks
    // below, which say what is wrong with it.
    let allowed = |b: u8| (b.wrapping_sub(b'a') < 26) | (b.wrapping_sub(b'0') < 10) | (b == b'-');
    if (1..=TENANT_ID_MAX_LEN).contains(&raw.len())
        && raw.bytes().fold(true, |ok, b| ok & allowed(b))
        && !raw.starts_with('-')
        && !raw.ends_with('-')
    {
        return Ok(());
    }
    if raw.is_empty() {
        return Err(TenantIdError::Empty);
    }
    // Count characters, not bytes, so a multi-byte character is reported as what it is below.
    let len = raw.chars().count();
    if len > TENANT_ID_MAX_LEN {
        return Err(TenantIdError::TooLong { len });
    }
    if let Some((position, found)) = raw
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(TenantIdError::InvalidCharacter { found, position });
    }
    if raw.starts_with('-') || raw.ends_with('-') {
        return Err(TenantIdError::EdgeHyphen);
    }
    Ok(())
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = TenantIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        validate(&raw).map_err(serde::de::Error::custom)?;
        Ok(Self(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_dns_label_like_ids() {
        for ok in [
            "a",
            "0",
            "acme",
            "acme-prod",
            "a1-b2-c3",
            &"x".repeat(TENANT_ID_MAX_LEN),
        ] {
            assert_eq!(
                TenantId::parse(ok).map(|t| t.to_string()),
                Ok(ok.to_string())
            );
        }
    }

    #[test]
    fn refuses_each_rule_with_its_own_reason() {
        assert_eq!(TenantId::parse(""), Err(TenantIdError::Empty));
        assert_eq!(
            TenantId::parse(&"x".repeat(41)),
            Err(TenantIdError::TooLong { len: 41 })
        );
        assert_eq!(
            TenantId::parse("Acme"),
            Err(TenantIdError::InvalidCharacter {
                found: 'A',
                position: 0
            })
        );
        assert_eq!(
            TenantId::parse("ac_me"),
            Err(TenantIdError::InvalidCharacter {
                found: '_',
                position: 2
            })
        );
        assert_eq!(
            TenantId::parse("a.b"),
            Err(TenantIdError::InvalidCharacter {
                found: '.',
                position: 1
            })
        );
        assert_eq!(
            TenantId::parse("acmé"),
            Err(TenantIdError::InvalidCharacter {
                found: 'é',
                position: 3
            })
        );
        assert_eq!(TenantId::parse("-acme"), Err(TenantIdError::EdgeHyphen));
        assert_eq!(TenantId::parse("acme-"), Err(TenantIdError::EdgeHyphen));
    }

    #[test]
    fn error_messages_tell_the_rule() {
        let msg = TenantId::parse("Acme").unwrap_err().to_string();
        assert!(msg.contains("'A'") && msg.contains("lowercase"), "{msg}");
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<TenantId>("\"acme\"").is_ok());
        let err = serde_json::from_str::<TenantId>("\"ACME\"").unwrap_err();
        assert!(err.to_string().contains("tenant id contains"), "{err}");
    }

    proptest! {
        /// The hand-written check and the pattern the API server enforces agree on every input.
        #[test]
        fn parse_agrees_with_the_schema_pattern(raw in "[a-zA-Z0-9_.-]{0,45}") {
            let by_pattern = raw.len() <= TENANT_ID_MAX_LEN && pattern_matches(&raw);
            prop_assert_eq!(TenantId::parse(&raw).is_ok(), by_pattern);
        }

        /// The same with multi-byte characters, which the one-pass check of valid ids must
        /// refuse like any other character outside the rule.
        #[test]
        fn parse_agrees_with_the_schema_pattern_beyond_ascii(raw in "[a-z0-9é-]{0,42}|\\PC{0,42}") {
            let by_pattern = raw.chars().count() <= TENANT_ID_MAX_LEN && pattern_matches(&raw);
            prop_assert_eq!(TenantId::parse(&raw).is_ok(), by_pattern);
        }
    }

    /// A tiny matcher for exactly [`TENANT_ID_PATTERN`], written independently of `validate`
    /// so the property above compares two implementations, not one with itself.
    fn pattern_matches(s: &str) -> bool {
        assert_eq!(TENANT_ID_PATTERN, "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$");
        let b = s.as_bytes();
        let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let mid = |c: u8| edge(c) || c == b'-';
        match b.len() {
            0 => false,
            1 => edge(b[0]),
            n => edge(b[0]) && edge(b[n - 1]) && b[1..n - 1].iter().all(|&c| mid(c)),
        }
    }
}
