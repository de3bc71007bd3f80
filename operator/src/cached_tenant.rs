//! A TenantAssignment as the operator caches it. Every controller reads the one shared store of
//! them, so at 100k tenants each byte of it is 100 kB of the operator's memory (docs/operator.md,
//! "The compact cache"). Deserialized straight from the watch (the full object only lives while
//! it is converted), it keeps everything the operator reads and drops or packs the rest:
//!
//! - no managed fields and no annotations: the operator writes only the status subresource of a
//!   TenantAssignment, never the object from this cache, and `kubectl apply` keeps a copy of the
//!   whole object in an annotation;
//! - the labels as one sorted, shared slice instead of a `BTreeMap` (whose first node has room
//!   for eleven entries even for one label), read through [`CachedTenant::labels`] —
//!   `ResourceExt::labels` would read the empty map left in the metadata. Shared, because policy
//!   resolution takes a view of every tenant, labels included, on every routing-table compile;
//! - the status' conditions with their type, status, reason and message shared between tenants
//!   (thousands of tenants say "served by alpha") through a bounded pool of shared strings;
//! - the spec's tier and the labels' keys and values through the same pool, the tenant id not
//!   repeated when it is the object's name ([`CachedTenant::tenant_id`]);
//! - the uid as its bits, out of the metadata: kube's store keys each object by an `ObjectRef`
//!   that copies the uid out of the metadata, so left there every tenant would carry it twice as
//!   a string of its own. Read it through [`CachedTenant::uid`] (which shadows `ResourceExt`'s);
//!   `object_ref` and `owner_ref` fill it in. The resourceVersion stays: the watch resumes
//!   from the last object's, and the reflector's key copies it from there.
//!
//! The status the API server holds is rebuilt from it whole and unchanged
//! ([`CachedStatus::to_status`]), so the tenant controller still compares what it would write
//! with what is there, and keeps the times of conditions that did not flip.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    num::NonZeroUsize,
    sync::{Arc, LazyLock, Mutex, PoisonError},
};

use cellstack_api::v1alpha1::{
    AutomaticPlacement, DataLoss, FinishedMove, MoveStatus, TenantAssignment,
    TenantAssignmentStatus, TenantPhase,
};
use k8s_openapi::{
    api::core::v1::ObjectReference,
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time},
};
use kube::Resource;
use serde::{Deserialize, Deserializer};

use crate::identity::Uid;

/// A TenantAssignment without what the operator never reads (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedTenant {
    /// Its metadata without labels, annotations, managed fields and uid.
    pub metadata: ObjectMeta,
    pub spec: CachedSpec,
    pub status: Option<CachedStatus>,
    labels: Labels,
    uid: Option<Uid>,
}

impl CachedTenant {
    /// Its labels (the metadata's map is left empty in the cache).
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// `metadata.uid` (left out of the cached metadata).
    pub fn uid(&self) -> Option<String> {
        self.uid.as_ref().map(Uid::to_string)
    }

    /// `metadata.uid`, packed: what a map of tenants keys by.
    pub fn uid_key(&self) -> Option<&Uid> {
        self.uid.as_ref()
    }

    /// `spec.tenantId`.
    pub fn tenant_id(&self) -> &str {
        match &self.spec.tenant_id {
            Some(id) => id,
            None => self.metadata.name.as_deref().unwrap_or_default(),
        }
    }

    /// The status as the API server holds it, rebuilt whole.
    pub fn full_status(&self) -> Option<TenantAssignmentStatus> {
        self.status.as_ref().map(CachedStatus::to_status)
    }
}

impl From<TenantAssignment> for CachedTenant {
    fn from(ta: TenantAssignment) -> Self {
        let TenantAssignment {
            mut metadata,
            spec,
            status,
        } = ta;
        let labels = Labels::from(metadata.labels.take().unwrap_or_default());
        let uid = metadata.uid.take().as_deref().map(Uid::parse);
        metadata.annotations = None;
        metadata.managed_fields = None;
        let tenant_id = (metadata.name.as_deref() != Some(spec.tenant_id.as_str()))
            .then(|| spec.tenant_id.into_boxed_str());
        Self {
            metadata,
            spec: CachedSpec {
                tenant_id,
                tier: intern(&spec.tier),
                cell: spec.cell.map(String::into_boxed_str),
                automatic: spec.automatic,
                accept_data_loss_of: spec.accept_data_loss_of.map(String::into_boxed_str),
            },
            status: status.map(CachedStatus::from),
            labels,
            uid,
        }
    }
}

/// A TenantAssignment's spec, packed: the tier shared, the id not repeated when it is the
/// object's name — which the CRD's validation requires, so in practice always (read it through
/// [`CachedTenant::tenant_id`]; an object admitted before that rule may still differ).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedSpec {
    /// `None`: the same as `metadata.name`.
    tenant_id: Option<Box<str>>,
    pub tier: Arc<str>,
    pub cell: Option<Box<str>>,
    pub automatic: Option<AutomaticPlacement>,
    pub accept_data_loss_of: Option<Box<str>>,
}

/// The object again, without what the cache dropped (annotations, managed fields): for test
/// fixtures, which build tenants as TenantAssignments.
#[cfg(test)]
impl From<CachedTenant> for TenantAssignment {
    fn from(cached: CachedTenant) -> Self {
        let tenant_id = cached.tenant_id().to_owned();
        let uid = cached.uid();
        let mut metadata = cached.metadata;
        let labels = cached.labels.to_map();
        metadata.labels = (!labels.is_empty()).then_some(labels);
        metadata.uid = uid;
        let spec = cached.spec;
        Self {
            metadata,
            spec: cellstack_api::v1alpha1::TenantAssignmentSpec {
                tenant_id,
                tier: spec.tier.to_string(),
                cell: spec.cell.map(String::from),
                automatic: spec.automatic,
                accept_data_loss_of: spec.accept_data_loss_of.map(String::from),
            },
            status: cached.status.as_ref().map(CachedStatus::to_status),
        }
    }
}

/// Read as a TenantAssignment, then packed: the full object lives only while it is converted.
impl<'de> Deserialize<'de> for CachedTenant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        TenantAssignment::deserialize(deserializer).map(Self::from)
    }
}

/// The same kind as [`TenantAssignment`]: watched, cached and reconciled as one.
impl Resource for CachedTenant {
    type DynamicType = ();
    type Scope = <TenantAssignment as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        TenantAssignment::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        TenantAssignment::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        TenantAssignment::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        TenantAssignment::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    /// With the uid the metadata leaves out, like every reference below (a reference to a
    /// TenantAssignment built from the cached metadata alone would have none).
    fn object_ref(&self, dt: &()) -> ObjectReference {
        ObjectReference {
            name: self.metadata.name.clone(),
            namespace: self.metadata.namespace.clone(),
            uid: self.uid(),
            api_version: Some(Self::api_version(dt).into_owned()),
            kind: Some(Self::kind(dt).into_owned()),
            ..ObjectReference::default()
        }
    }

    fn owner_ref(&self, dt: &()) -> Option<OwnerReference> {
        Some(OwnerReference {
            api_version: Self::api_version(dt).into_owned(),
            kind: Self::kind(dt).into_owned(),
            name: self.metadata.name.clone()?,
            uid: self.uid()?,
            ..OwnerReference::default()
        })
    }
}

/// Labels, sorted by key, in one shared allocation for the list (none when there are none):
/// a clone is a reference count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Option<Arc<[Label]>>);

/// A label's key and value, each shared with the tenants that carry the same.
type Label = (Arc<str>, Arc<str>);

impl Labels {
    fn pairs(&self) -> &[Label] {
        self.0.as_deref().unwrap_or_default()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let pairs = self.pairs();
        pairs
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*pairs[i].1)
    }

    /// As a map.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.pairs()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    /// Sorted already: a `BTreeMap` iterates in key order.
    fn from(map: BTreeMap<String, String>) -> Self {
        Self((!map.is_empty()).then(|| map.iter().map(|(k, v)| (intern(k), intern(v))).collect()))
    }
}

/// A TenantAssignment's status with its conditions packed; the other fields as they are.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedStatus {
    pub phase: TenantPhase,
    pub cell: Option<String>,
    pub epoch: u64,
    pub shard_variant: u32,
    pub observed_generation: Option<i64>,
    pub move_: Option<Box<MoveStatus>>,
    pub recent_moves: Vec<FinishedMove>,
    pub data_marker: Option<String>,
    pub data_loss: Option<Box<DataLoss>>,
    conditions: Box<[CachedCondition]>,
}

impl CachedStatus {
    /// The status as the API server holds it.
    pub fn to_status(&self) -> TenantAssignmentStatus {
        TenantAssignmentStatus {
            phase: self.phase,
            cell: self.cell.clone(),
            epoch: self.epoch,
            shard_variant: self.shard_variant,
            conditions: self
                .conditions
                .iter()
                .map(CachedCondition::to_condition)
                .collect(),
            observed_generation: self.observed_generation,
            move_: self.move_.clone(),
            recent_moves: self.recent_moves.clone(),
            data_marker: self.data_marker.clone(),
            data_loss: self.data_loss.clone(),
        }
    }
}

impl From<TenantAssignmentStatus> for CachedStatus {
    fn from(s: TenantAssignmentStatus) -> Self {
        Self {
            phase: s.phase,
            cell: s.cell,
            epoch: s.epoch,
            shard_variant: s.shard_variant,
            observed_generation: s.observed_generation,
            move_: s.move_,
            // An empty list keeps no buffer; a kept one is shrunk to its length.
            recent_moves: {
                let mut moves = s.recent_moves;
                moves.shrink_to_fit();
                moves
            },
            data_marker: s.data_marker,
            data_loss: s.data_loss,
            conditions: s.conditions.iter().map(CachedCondition::from).collect(),
        }
    }
}

/// A status condition whose strings are shared with every other tenant's that says the same:
/// 56 bytes and no allocation of its own for a message already in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedCondition {
    head: Arc<Head>,
    pub message: Arc<str>,
    pub observed_generation: Option<i64>,
    pub last_transition_time: Time,
}

/// What a condition says besides its message and times: one of a few for every tenant.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    type_: Box<str>,
    status: Box<str>,
    reason: Box<str>,
}

impl CachedCondition {
    pub fn type_(&self) -> &str {
        &self.head.type_
    }

    pub fn status(&self) -> &str {
        &self.head.status
    }

    pub fn reason(&self) -> &str {
        &self.head.reason
    }

    /// The condition as the API server holds it.
    pub fn to_condition(&self) -> Condition {
        Condition {
            type_: self.type_().to_owned(),
            status: self.status().to_owned(),
            reason: self.reason().to_owned(),
            message: self.message.to_string(),
            observed_generation: self.observed_generation,
            last_transition_time: self.last_transition_time.clone(),
        }
    }
}

impl From<&Condition> for CachedCondition {
    fn from(c: &Condition) -> Self {
        Self {
            head: head(&c.type_, &c.status, &c.reason),
            message: intern(&c.message),
            observed_generation: c.observed_generation,
            last_transition_time: c.last_transition_time.clone(),
        }
    }
}

/// The shared [`Head`] of a condition, from the same kind of pool as [`intern`]'s.
fn head(type_: &str, status: &str, reason: &str) -> Arc<Head> {
    static POOL: LazyLock<Mutex<lru::LruCache<Box<str>, Arc<Head>>>> =
        LazyLock::new(|| Mutex::new(lru::LruCache::new(pool_entries())));
    let make = || {
        Arc::new(Head {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
        })
    };
    let key = [type_, status, reason].join("\n");
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    match pool.get(key.as_str()) {
        // The key's separator could occur in a field: the fields decide.
        Some(shared)
            if (&*shared.type_, &*shared.status, &*shared.reason) == (type_, status, reason) =>
        {
            shared.clone()
        }
        Some(_) => make(),
        None => {
            let shared = make();
            pool.put(key.into_boxed_str(), shared.clone());
            shared
        }
    }
}

fn pool_entries() -> NonZeroUsize {
    NonZeroUsize::new(POOL_ENTRIES).unwrap_or(NonZeroUsize::MIN)
}

/// How many distinct strings (and condition heads) the pools remember.
const POOL_ENTRIES: usize = 4096;

/// A bounded pool of shared strings: the least recently asked for leaves first. One that left
/// stays valid wherever it is held; it is only no longer shared with newcomers.
struct Strings(Mutex<lru::LruCache<Arc<str>, ()>>);

impl Strings {
    fn new(entries: NonZeroUsize) -> Self {
        Self(Mutex::new(lru::LruCache::new(entries)))
    }

    /// `s`, shared with every earlier caller that asked for it while it was in the pool.
    fn get(&self, s: &str) -> Arc<str> {
        let mut pool = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((shared, ())) = pool.get_key_value(s) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        pool.put(shared.clone(), ());
        shared
    }
}

/// `s` from the process' pool of [`POOL_ENTRIES`] strings.
fn intern(s: &str) -> Arc<str> {
    static STRINGS: LazyLock<Strings> = LazyLock::new(|| Strings::new(pool_entries()));
    STRINGS.get(s)
}

#[cfg(test)]
mod tests {
    use cellstack_api::v1alpha1::MoveStep;
    use k8s_openapi::jiff::Timestamp;
    use kube::ResourceExt;

    use super::*;
    use crate::fixtures::TenantFixture;

    fn condition(type_: &str, status: &str, message: &str, secs: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "Because".into(),
            message: message.into(),
            observed_generation: Some(3),
            last_transition_time: Time(Timestamp::from_second(secs).expect("a valid time")),
        }
    }

    fn full_tenant() -> TenantAssignment {
        let mut ta = TenantAssignment::test("t1").served_by("alpha");
        ta.labels_mut().insert("team".into(), "payments".into());
        ta.labels_mut().insert("plan".into(), "gold".into());
        ta.annotations_mut().insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        );
        ta.meta_mut().managed_fields = Some(vec![Default::default(); 2]);
        ta.meta_mut().resource_version = Some("4711".into());
        ta.meta_mut().uid = Some("905b3bbd-8f22-4770-90b5-afc747e17da5".into());
        let status = ta.status.get_or_insert_with(Default::default);
        status.conditions = vec![
            condition("Placed", "True", "placed on alpha", 10),
            condition("Progressing", "False", "served by alpha", 20),
        ];
        status.data_marker = Some("m-1".into());
        status.recent_moves = vec![FinishedMove {
            from: "beta".into(),
            to: "alpha".into(),
            result: MoveStep::Done,
            started_at: None,
            finished_at: None,
            keys_copied: 12,
            write_pause_millis: Some(3),
            message: None,
        }];
        ta
    }

    #[test]
    fn the_status_is_rebuilt_as_the_api_server_holds_it() {
        let ta = full_tenant();
        let cached = CachedTenant::from(ta.clone());
        assert_eq!(cached.full_status(), ta.status);
        assert_eq!(cached.tenant_id(), "t1");
        assert_eq!(
            cached.spec.tenant_id, None,
            "the same as the name: not kept twice"
        );
        assert_eq!(TenantAssignment::from(cached.clone()).spec, ta.spec);
        assert_eq!(cached.name_any(), "t1");
    }

    #[test]
    fn the_uid_leaves_the_metadata_and_is_read_and_referenced_as_before() {
        let ta = full_tenant();
        let cached = CachedTenant::from(ta.clone());
        assert_eq!(
            cached.metadata.uid, None,
            "the store's key copies it out of the metadata"
        );
        let key = kube::runtime::reflector::ObjectRef::from_obj(&cached);
        assert_eq!(key.extra.uid, None);
        assert!(ta.uid().is_some());
        assert_eq!(cached.uid(), ta.uid());
        assert!(ta.resource_version().is_some());
        assert_eq!(
            cached.resource_version(),
            ta.resource_version(),
            "kept in the metadata: the watch resumes from it"
        );
        assert_eq!(cached.object_ref(&()), ta.object_ref(&()));
        assert_eq!(cached.owner_ref(&()), ta.owner_ref(&()));
        assert_eq!(
            cached.controller_owner_ref(&()),
            ta.controller_owner_ref(&())
        );
        assert_eq!(TenantAssignment::from(cached).metadata.uid, ta.metadata.uid);
    }

    #[test]
    fn a_tenant_id_other_than_the_name_is_kept() {
        let mut ta = full_tenant();
        ta.spec.tenant_id = "acme".into();
        ta.spec.cell = Some("alpha".into());
        ta.spec.accept_data_loss_of = Some("m-0".into());
        let cached = CachedTenant::from(ta.clone());
        assert_eq!(
            (cached.name_any().as_str(), cached.tenant_id()),
            ("t1", "acme")
        );
        assert_eq!(TenantAssignment::from(cached).spec, ta.spec);
    }

    #[test]
    fn labels_move_out_of_the_metadata_and_annotations_and_managed_fields_are_dropped() {
        let cached = CachedTenant::from(full_tenant());
        assert_eq!(cached.labels().get("team"), Some("payments"));
        assert_eq!(cached.labels().get("plan"), Some("gold"));
        assert_eq!(cached.labels().get("zone"), None);
        assert_eq!(cached.labels().to_map(), full_tenant().labels().clone());
        assert_eq!(
            cached.metadata.labels, None,
            "one copy: the packed one (ResourceExt::labels reads an empty map)"
        );
        assert_eq!(cached.metadata.annotations, None);
        assert_eq!(
            cached.metadata.managed_fields, None,
            "not an emptied list: it keeps its buffer"
        );
    }

    #[test]
    fn tenants_saying_the_same_share_the_strings() {
        let a = CachedTenant::from(full_tenant());
        let b = CachedTenant::from(full_tenant());
        let (a, b) = (
            &a.status.as_ref().expect("a status").conditions[1],
            &b.status.as_ref().expect("a status").conditions[1],
        );
        assert!(Arc::ptr_eq(&a.message, &b.message));
        assert!(Arc::ptr_eq(&a.head, &b.head));
    }

    #[test]
    fn a_string_pushed_out_of_the_pool_stays_valid_and_is_pooled_again_when_asked_for() {
        // A pool of its own: filling the process' pool would race the other tests' sharing.
        let pool = Strings::new(NonZeroUsize::new(2).expect("not zero"));
        let first = pool.get("pushed out");
        assert!(
            Arc::ptr_eq(&first, &pool.get("pushed out")),
            "shared while pooled"
        );
        pool.get("filler 1");
        pool.get("filler 2");
        assert_eq!(&*first, "pushed out");
        let again = pool.get("pushed out");
        assert!(!Arc::ptr_eq(&first, &again), "the pool forgot the first");
        assert!(Arc::ptr_eq(&again, &pool.get("pushed out")));
    }

    #[test]
    fn conditions_that_differ_in_any_field_of_their_head_do_not_share_it() {
        let heads = [
            head("Placed", "True", "Placed"),
            head("Placed", "False", "Placed"),
            head("Placed", "True", "Pinned"),
            head("Ready", "True", "Placed"),
            // Two with the same joined key, from other fields.
            head("Placed\nTrue", "Placed", ""),
            head("Placed", "True\nPlaced", ""),
        ];
        for (i, a) in heads.iter().enumerate() {
            for b in &heads[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert!(Arc::ptr_eq(&heads[0], &head("Placed", "True", "Placed")));
        let again = head("Placed", "True\nPlaced", "");
        assert_eq!(
            (&*again.type_, &*again.status, &*again.reason),
            ("Placed", "True\nPlaced", ""),
            "a key shared with another head gives the fields asked for"
        );
    }

    #[test]
    fn it_is_watched_at_the_same_path_as_a_tenant_assignment() {
        assert_eq!(
            CachedTenant::url_path(&(), None),
            TenantAssignment::url_path(&(), None)
        );
        assert_eq!(
            (CachedTenant::kind(&()), CachedTenant::api_version(&())),
            (
                TenantAssignment::kind(&()),
                TenantAssignment::api_version(&())
            )
        );
        let cached = CachedTenant::from(full_tenant());
        assert_eq!(cached.object_ref(&()), full_tenant().object_ref(&()));
    }

    #[test]
    fn it_deserializes_from_the_json_of_a_tenant_assignment() {
        let ta = full_tenant();
        let json = serde_json::to_value(&ta).expect("serializes");
        let cached: CachedTenant = serde_json::from_value(json).expect("deserializes");
        assert_eq!(cached, CachedTenant::from(ta));
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_cached_condition_is_56_bytes() {
        assert_eq!(std::mem::size_of::<CachedCondition>(), 56);
    }
}
