//! The cell admin API: what the operator calls to create, move and purge tenants in a cell.
//! Served on a separate listener the router never exposes; every call needs
//! `Authorization: Bearer <token>` with the token from the cell's admin Secret.

use serde::{Deserialize, Serialize};

/// Path prefix of the admin API. `{tenant}` is a tenant id.
pub const PREFIX: &str = "/admin/v1/tenants";

/// Path on a cell's admin listener (not token-protected, like `/metrics`) that says which
/// effective-policy version the cell enforces, so the operator can report acknowledgement.
pub const POLICY_VERSION_PATH: &str = "/policy-version";

/// Answer of [`POLICY_VERSION_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyVersion {
    /// `version` of the policy file the cell loaded (empty: none).
    pub version: String,
    /// Tenants the file names.
    pub tenants: u32,
}

/// Where a tenant stands in a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    /// Receiving an import; not served.
    Importing,
    /// Served.
    Active,
    /// Reads served, writes refused (a move is in its Fence step).
    Fenced,
    /// Lives elsewhere now (`moved_to`); every request is answered with `moved`.
    Moved,
}

/// A tenant's state in a cell (`GET {PREFIX}/{tenant}`, and the body of `PUT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantRecord {
    pub state: TenantState,
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
    /// Whether writes are being recorded for an export of changes (set by `mark`).
    #[serde(default)]
    pub tracking: bool,
}

/// Body of `POST {PREFIX}/{tenant}/activate`: serve the tenant at this epoch (never lowers it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activate {
    pub epoch: u64,
}

/// Body of `POST {PREFIX}/{tenant}/moved`: the tenant now lives in `to` at `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Moved {
    pub to: String,
    pub epoch: u64,
}

/// The value of one exported key, by Redis type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Value {
    /// A string; bytes as base64.
    String { base64: String },
    /// A hash; fields sorted by name, values as base64.
    Hash { fields: Vec<(String, String)> },
    /// The key no longer exists (in an export of changes).
    Deleted,
}

/// One exported key: its suffix after the tenant prefix (`i:order-1`), so it can be imported
/// under the same tenant in another cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub key: String,
    pub value: Value,
    /// Remaining time to live in milliseconds, if the key expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// A page of an export (`GET {PREFIX}/{tenant}/export?cursor=..&count=..`, or
/// `GET {PREFIX}/{tenant}/changes` for the keys written since `mark`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportPage {
    pub entries: Vec<Entry>,
    /// Pass back to continue; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Body of `POST {PREFIX}/{tenant}/import`: entries to write (the tenant must be `importing`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Import {
    pub entries: Vec<Entry>,
}

/// `GET {PREFIX}/{tenant}/checksum`: the tenant's data keys (items, counters, limiter state) and
/// an order-independent digest of their names and values, equal in two cells exactly when they
/// hold the same data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checksum {
    pub keys: u64,
    /// Lowercase hex.
    pub digest: String,
}
