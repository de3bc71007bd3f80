//! The tenant key layout in a cell's Redis: every key of a tenant starts with one prefix that
//! carries a hash tag, so the tenant's data can be enumerated (`SCAN MATCH`), copied, checksummed
//! and purged as a unit, and stays in one slot on a Redis Cluster.
//!
//! ```text
//! cs:{acme}:i:<item>      an item (string value)
//! cs:{acme}:c:<counter>   an atomic counter
//! cs:{acme}:rl:<limit>    rate-limiter state (moves with the tenant)
//! cs:{acme}:meta          the tenant's state in this cell (epoch, fence, moved-to), its data's
//!                         key count and digest, and the policy override a move handed over
//!                         (fields `policyVersion`, read with the state, and `policy`)
//! cs:{acme}:chg           keys written since an export mark (during a move)
//!
//! cs:datastore:confirmed  the cell's own key (no hash tag, so never a tenant's): present once
//!                         the operator confirmed that the datastore holds a record of every
//!                         tenant placed in the cell; gone when the datastore came back empty
//! cs:datastore:confirming the token of a confirmation under way
//! ```

use std::fmt;

use crate::tenant::TenantId;

/// First segment of every key cellstack writes.
pub const KEY_NAMESPACE: &str = "cs";

/// Present (holding the time of the confirmation, in ms since the epoch) once the operator
/// confirmed that the cell's datastore holds a record of every tenant placed in the cell. A
/// datastore that comes back without its data comes back without this key too, so a cell that
/// finds no record of a tenant answers `503 data_unavailable` rather than `404 unknown_tenant`
/// until the operator has looked at every tenant again (see `admin::DATASTORE_PATH`).
pub const DATASTORE_CONFIRMED_KEY: &str = "cs:datastore:confirmed";

/// The token of a confirmation under way: the confirmation sets it first and sets
/// [`DATASTORE_CONFIRMED_KEY`] only if it is still there after every record was found, so a
/// datastore emptied during the check is never confirmed.
pub const DATASTORE_CONFIRMING_KEY: &str = "cs:datastore:confirming";

/// Longest item or counter name accepted.
pub const ITEM_NAME_MAX_LEN: usize = 200;

/// What a person should read when an item name is refused.
pub const ITEM_NAME_RULE: &str =
    "an item name is 1-200 characters of letters, digits, '.', '_', '~' and '-'";

/// The kind of a key inside a tenant's key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Item,
    Counter,
    RateLimit,
    Meta,
    Changes,
}

impl KeyKind {
    /// Tenant data: what a move copies and a checksum covers. Bookkeeping of the cell's own
    /// (the tenant's state in this cell, change tracking) is not data.
    pub const fn is_data(self) -> bool {
        matches!(self, Self::Item | Self::Counter | Self::RateLimit)
    }
}

/// A validated item or counter name. Only URL-unreserved characters, so names are safe in paths
/// and contain no Redis glob characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemName(String);

/// Why a string is not an item name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemNameError {
    #[error("item name is empty: {ITEM_NAME_RULE}")]
    Empty,
    #[error("item name is {len} characters long: {ITEM_NAME_RULE}")]
    TooLong { len: usize },
    #[error("item name contains {found:?} at position {position}: {ITEM_NAME_RULE}")]
    InvalidCharacter { found: char, position: usize },
}

impl ItemName {
    pub fn parse(raw: &str) -> Result<Self, ItemNameError> {
        if raw.is_empty() {
            return Err(ItemNameError::Empty);
        }
        let len = raw.chars().count();
        if len > ITEM_NAME_MAX_LEN {
            return Err(ItemNameError::TooLong { len });
        }
        if let Some((position, found)) = raw
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-')))
        {
            return Err(ItemNameError::InvalidCharacter { found, position });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ItemName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ItemName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The keys of one tenant. Cheap to build; hold one per request or per tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeys {
    /// `cs:{<tenant>}:`
    prefix: String,
}

impl TenantKeys {
    pub fn new(tenant: &TenantId) -> Self {
        Self {
            prefix: format!("{KEY_NAMESPACE}:{{{tenant}}}:"),
        }
    }

    /// Every key of the tenant starts with this, and no key of another tenant does.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `SCAN MATCH` pattern for all of the tenant's keys. Tenant ids hold no glob characters.
    pub fn scan_pattern(&self) -> String {
        format!("{}*", self.prefix)
    }

    pub fn item(&self, name: &ItemName) -> String {
        format!("{}i:{name}", self.prefix)
    }

    pub fn counter(&self, name: &ItemName) -> String {
        format!("{}c:{name}", self.prefix)
    }

    /// Rate-limiter state for one limit of the tenant's effective policy.
    pub fn rate_limit(&self, limit: &str) -> String {
        format!("{}rl:{limit}", self.prefix)
    }

    pub fn meta(&self) -> String {
        format!("{}meta", self.prefix)
    }

    pub fn changes(&self) -> String {
        format!("{}chg", self.prefix)
    }

    /// The change set a move took before fencing (`rotate`): writes after it land in a fresh
    /// [`Self::changes`].
    pub fn changes_taken(&self) -> String {
        format!("{}chg:taken", self.prefix)
    }

    /// What kind of key `key` is, or `None` when it is not one of this tenant's keys.
    pub fn classify(&self, key: &str) -> Option<KeyKind> {
        let rest = key.strip_prefix(&self.prefix)?;
        match rest {
            "meta" => Some(KeyKind::Meta),
            "chg" | "chg:taken" => Some(KeyKind::Changes),
            _ if rest.starts_with("i:") => Some(KeyKind::Item),
            _ if rest.starts_with("c:") => Some(KeyKind::Counter),
            _ if rest.starts_with("rl:") => Some(KeyKind::RateLimit),
            _ => None,
        }
    }
}

/// The tenant a key belongs to, read back from the hash tag.
pub fn tenant_of_key(key: &str) -> Option<TenantId> {
    let rest = key.strip_prefix(KEY_NAMESPACE)?.strip_prefix(":{")?;
    let (tenant, after) = rest.split_once('}')?;
    after.starts_with(':').then_some(())?;
    TenantId::parse(tenant).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    #[test]
    fn layout_is_the_documented_one() {
        let keys = TenantKeys::new(&t("acme"));
        let item = ItemName::parse("order-1").unwrap();
        assert_eq!(keys.item(&item), "cs:{acme}:i:order-1");
        assert_eq!(keys.counter(&item), "cs:{acme}:c:order-1");
        assert_eq!(keys.rate_limit("0"), "cs:{acme}:rl:0");
        assert_eq!(keys.meta(), "cs:{acme}:meta");
        assert_eq!(keys.changes(), "cs:{acme}:chg");
        assert_eq!(keys.changes_taken(), "cs:{acme}:chg:taken");
        assert_eq!(keys.scan_pattern(), "cs:{acme}:*");
    }

    #[test]
    fn the_cells_own_keys_belong_to_no_tenant() {
        for key in [DATASTORE_CONFIRMED_KEY, DATASTORE_CONFIRMING_KEY] {
            assert_eq!(tenant_of_key(key), None, "{key}");
            assert!(!key.starts_with(TenantKeys::new(&t("datastore")).prefix()));
        }
    }

    #[test]
    fn a_tenant_whose_id_extends_another_shares_no_prefix() {
        let a = TenantKeys::new(&t("a"));
        let ab = TenantKeys::new(&t("ab"));
        let item = ItemName::parse("x").unwrap();
        assert!(!ab.item(&item).starts_with(a.prefix()));
        assert_eq!(a.classify(&ab.item(&item)), None);
    }

    #[test]
    fn classify_knows_data_from_bookkeeping() {
        let keys = TenantKeys::new(&t("acme"));
        let n = ItemName::parse("n").unwrap();
        assert_eq!(keys.classify(&keys.item(&n)), Some(KeyKind::Item));
        assert_eq!(keys.classify(&keys.counter(&n)), Some(KeyKind::Counter));
        assert_eq!(
            keys.classify(&keys.rate_limit("0")),
            Some(KeyKind::RateLimit)
        );
        assert_eq!(keys.classify(&keys.meta()), Some(KeyKind::Meta));
        assert_eq!(keys.classify(&keys.changes()), Some(KeyKind::Changes));
        assert_eq!(keys.classify(&keys.changes_taken()), Some(KeyKind::Changes));
        assert!(KeyKind::Item.is_data() && KeyKind::RateLimit.is_data());
        assert!(!KeyKind::Meta.is_data() && !KeyKind::Changes.is_data());
        assert_eq!(keys.classify("cs:{acme}:zzz"), None);
    }

    #[test]
    fn item_names_refuse_glob_and_separator_characters() {
        for bad in ["", "a*", "a?", "a[b]", "a:b", "a/b", "a b", "é"] {
            assert!(ItemName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ItemName::parse(&"a".repeat(ITEM_NAME_MAX_LEN + 1)).is_err());
        assert!(ItemName::parse("Order_1.v2~x-y").is_ok());
    }

    proptest! {
        #[test]
        fn every_key_names_its_tenant(id in "[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?", name in "[A-Za-z0-9._~-]{1,40}") {
            let tenant = t(&id);
            let keys = TenantKeys::new(&tenant);
            let name = ItemName::parse(&name).unwrap();
            for key in [keys.item(&name), keys.counter(&name), keys.meta(), keys.changes(), keys.rate_limit("0")] {
                prop_assert_eq!(tenant_of_key(&key), Some(tenant.clone()));
                prop_assert!(keys.classify(&key).is_some());
            }
        }
    }
}
