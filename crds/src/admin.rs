//! The cell admin API: what the operator calls to create, move and purge tenants in a cell.
//! Served on a separate listener the router never exposes; every call needs
//! `Authorization: Bearer <token>` with the token from the cell's admin Secret.

use serde::{Deserialize, Serialize};

/// Path prefix of the admin API. `{tenant}` is a tenant id.
pub const PREFIX: &str = "/admin/v1/tenants";

/// Path of the cell's datastore confirmation (token-protected like [`PREFIX`]).
///
/// A cell that finds no record of a tenant cannot tell on its own whether the tenant was never
/// placed there or its datastore came back empty (an `Ephemeral` cell restarted, a volume lost):
/// both look the same. So it answers `404 unknown_tenant` only while the datastore carries the
/// operator's confirmation that it holds every tenant placed in the cell
/// (`keys::DATASTORE_CONFIRMED_KEY`), and `503 data_unavailable` otherwise. A datastore that
/// lost its data lost the confirmation with it, so its tenants are never answered as unknown
/// (or as empty) in the time the operator takes to mark them lost.
///
/// `GET` answers [`DatastoreConfirmation`]. `PUT` with [`ConfirmDatastore`] checks that every
/// tenant named has a record and sets the confirmation only then, atomically with respect to the
/// datastore being emptied meanwhile; it answers [`DatastoreConfirmation`] with what is missing.
pub const DATASTORE_PATH: &str = "/admin/v1/datastore";

/// Most tenants [`DatastoreConfirmation::missing`] names.
pub const MISSING_NAMED: usize = 100;

/// Body of `PUT` [`DATASTORE_PATH`]: the tenants the operator placed in the cell and gave a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmDatastore {
    pub tenants: Vec<String>,
}

/// Answer of [`DATASTORE_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatastoreConfirmation {
    /// Whether the datastore carries the confirmation.
    pub confirmed: bool,
    /// When it was confirmed, in milliseconds since the Unix epoch (the cell's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// `PUT` only: how many of the tenants named have no record (then nothing was confirmed).
    #[serde(default)]
    pub missing_count: u64,
    /// `PUT` only: the first [`MISSING_NAMED`] of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// Path of the creation of new tenants' records, many in one call (token-protected like
/// [`PREFIX`]): `POST` with [`NewTenants`], answered one [`NewTenantOutcome`] per tenant, in
/// order. Each record is created only where the tenant has none; a tenant that has one keeps
/// it, and the answer carries it, so the caller judges it as it would a `GET`. All records of a
/// call are written together, durably (one replica acknowledgement for the call).
pub const NEW_TENANTS_PATH: &str = "/admin/v1/new-tenants";

/// Most tenants in one [`NEW_TENANTS_PATH`] call.
pub const NEW_TENANTS_MAX: usize = 256;

/// One tenant of [`NewTenants`]: its record is created `active` at `epoch` with `marker`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewTenant {
    pub tenant: String,
    pub epoch: u64,
    pub marker: String,
}

/// Body of `POST` [`NEW_TENANTS_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewTenants {
    pub tenants: Vec<NewTenant>,
}

/// What [`NEW_TENANTS_PATH`] did for one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewTenantOutcome {
    pub tenant: String,
    /// Whether the record was created by this call (else the tenant already had `record`).
    pub created: bool,
    /// The record the cell holds for the tenant now.
    pub record: TenantRecord,
}

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

/// Path under `{PREFIX}/{tenant}` of a tenant's policy override: `PUT` hands a cell the
/// tenant's effective policy ahead of the cell's policy file ([`PolicyOverride`]); `GET` answers
/// what the lane that serves the call enforces for the tenant ([`PolicyInForce`]).
///
/// A move hands its target the tenant's policy in Prepare and checks every lane's answer, so
/// the tenant is held to its own policy on the target from its first request there, however
/// long the target's policy ConfigMap takes to reach the lanes (see `docs/moves.md`).
pub const POLICY_OVERRIDE_PATH: &str = "policy";

/// How long a cell keeps a policy override when the file never catches up with it, in
/// milliseconds (10 minutes): well past the time a ConfigMap volume takes to update (the
/// kubelet's sync period plus its cache, about a minute or two by default). It bounds how long
/// an override can outlive a later change of the tenant's policy that the file carries without
/// naming the tenant (a change to the default policy); see `docs/cell.md`.
pub const POLICY_OVERRIDE_TTL_MS: u64 = 10 * 60 * 1000;

/// Body of `PUT {PREFIX}/{tenant}/policy`: the tenant's effective policy, enforced by every lane
/// of the cell until the cell's policy file carries it (the file's `version` equals `version`,
/// or the file names the tenant) or `ttl_ms` has passed. Kept in the tenant's record in the
/// cell's Redis, so a lane that starts later enforces it too; purging the tenant removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyOverride {
    /// `version` of the cell's policy file that carries this policy (the operator computes the
    /// file with the tenant in it).
    pub version: String,
    pub policy: crate::policy::EffectivePolicy,
    /// Lifetime, counted by the cell from when it receives the override.
    pub ttl_ms: u64,
}

/// Where the policy a lane enforces for a tenant comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PolicySource {
    /// The cell's policy file (its entry for the tenant, or its default).
    File,
    /// An override the operator handed over, not yet carried by the file.
    Override,
}

/// Answer of `GET`/`PUT {PREFIX}/{tenant}/policy`: what the answering lane enforces for the
/// tenant right now, read the way a request of the tenant reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInForce {
    /// The policy the lane holds the tenant to (none: the tenant is not limited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::EffectivePolicy>,
    pub source: PolicySource,
    /// `version` of the policy file the lane has loaded.
    pub file_version: String,
    /// `version` of the tenant's override the lane knows, in force or already carried by the
    /// file (none: the tenant has no override in this cell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_version: Option<String>,
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
    /// The cell's datastore came back without the tenant's data (its record carries the marker
    /// of the data that was lost): every request is answered `503 data_unavailable` until the
    /// data is restored or the loss is accepted (the TenantAssignment's `DataLost` condition).
    Lost,
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
    /// The marker of the tenant's data: a random token the operator gives the data when it
    /// creates the tenant's record, keeps in the TenantAssignment's `status.dataMarker` (outside
    /// the datastore), and carries along on every move. A datastore that answers without the
    /// record, or with another marker, lost the data the marker names. `PUT` keeps the stored
    /// marker when this is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

impl TenantRecord {
    /// A record in `state` at `epoch` with `marker`: not moved, not tracking writes.
    pub fn new(state: TenantState, epoch: u64, marker: Option<String>) -> Self {
        Self {
            state,
            epoch,
            moved_to: None,
            tracking: false,
            marker,
        }
    }
}

/// Whether `marker` is one the operator could have made: what the cell stores and the CRD
/// accepts in `spec.acceptDataLossOf` (lowercase hex, 16 to 64 characters).
pub fn valid_marker(marker: &str) -> bool {
    (16..=64).contains(&marker.len())
        && marker
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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
/// `GET {PREFIX}/{tenant}/changes` for the keys written since `mark`, whose last page also
/// carries the current limiter state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportPage {
    pub entries: Vec<Entry>,
    /// Pass back to continue; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Answer of `POST {PREFIX}/{tenant}/changes/take`: the keys recorded since `mark` (or the last
/// take) become the *taken* set, which `GET {PREFIX}/{tenant}/changes?taken=true` pages through
/// (without limiter state), and writes from then on are recorded afresh. A move copies the
/// taken set before fencing, so the fenced catch-up only copies what was written since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TakenChanges {
    /// Keys in the taken set.
    pub keys: u64,
}

/// Body of `POST {PREFIX}/{tenant}/import`: entries to write (the tenant must be `importing`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Import {
    pub entries: Vec<Entry>,
}

/// `GET {PREFIX}/{tenant}/checksum`: the count of the tenant's data keys (items and counters)
/// and an order-independent digest of their names and values, equal in two cells exactly when
/// they hold the same data.
///
/// The digest is the XOR, over every item and counter, of [`entry_digest`] (SHA-1 of the key
/// suffix, a zero byte and the raw value), as 40 lowercase hex digits; all zeros for no data.
/// Cells keep it up to date on every write and import, so reading it costs one Redis call
/// whatever the tenant's size: a move verifies inside its write pause. `?recount=true`
/// recomputes both figures from the keys themselves (a full scan, for audits and tests).
///
/// Limiter state is not covered: reads served while the tenant is fenced still change it (it
/// moves with the tenant all the same: the export carries it, and the last page of `changes`
/// carries its current value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checksum {
    pub keys: u64,
    /// Lowercase hex, 40 digits.
    pub digest: String,
}

/// Query of `GET {PREFIX}/{tenant}/checksum`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChecksumQuery {
    /// Recompute from the keys instead of reading the maintained figures.
    #[serde(default)]
    pub recount: bool,
}

/// The digest of an empty tenant.
pub const EMPTY_DIGEST: &str = "0000000000000000000000000000000000000000";

/// One data key's share of [`Checksum::digest`]: SHA-1 over the key suffix (`i:name`,
/// `c:name`), a zero byte and the raw value. The cells' Lua scripts compute the same with
/// `redis.sha1hex`; SHA-1 because it is what Redis scripting offers, and collisions here need
/// an adversary who controls both cells' data.
pub fn entry_digest(suffix: &str, value: &[u8]) -> [u8; 20] {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(suffix.as_bytes());
    h.update([0]);
    h.update(value);
    h.finalize().into()
}

/// Folds entry digests into a tenant digest (XOR: order-independent; keys are unique, so
/// nothing cancels out).
pub fn fold_digest<'a>(parts: impl IntoIterator<Item = &'a [u8; 20]>) -> String {
    let mut acc = [0u8; 20];
    for part in parts {
        for (a, b) in acc.iter_mut().zip(part) {
            *a ^= b;
        }
    }
    hex::encode(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors computed with Python's hashlib; the cells' Lua must agree (their tests compare
    /// the maintained digest with a recount through these functions).
    #[test]
    fn digests_follow_the_documented_construction() {
        let a = entry_digest("i:a", b"x");
        let b = entry_digest("c:n", b"42");
        assert_eq!(hex::encode(a), "3dd5994624beb0cb3348b169e268ce77094f8825");
        assert_eq!(
            fold_digest([&a, &b]),
            "913e10cc660378ad06c6fbd2e5ec57e5a3d057f5"
        );
        assert_eq!(fold_digest([&b, &a]), fold_digest([&a, &b]));
        assert_eq!(fold_digest([]), EMPTY_DIGEST);
        assert_eq!(fold_digest([&a, &a]), EMPTY_DIGEST);
    }
}
