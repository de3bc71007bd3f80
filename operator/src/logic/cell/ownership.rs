//! Which Cell the objects of a stack belong to, and how they say so. In the cluster the Cell is
//! in, a controller owner reference to it (the garbage collector deletes the stack with the
//! Cell); in a member cluster, which has no Cell to refer to, no owner reference but the labels
//! [`CELL_UID_LABEL`] and [`MEMBER_CLUSTER_LABEL`] (docs/multicluster.md, D4). Pure: building,
//! orphan deletion, the watches and the guard on a member's namespace all ask these functions.

use std::collections::BTreeMap;

use cellstack_api::v1alpha1::{Cell, GROUP};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::{
    error::{Error, Result},
    names::{CELL_LABEL, CELL_UID_LABEL, MEMBER_CLUSTER_LABEL},
};

/// How the objects of one cell's stack name the Cell that controls them.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    /// The stack is in the cluster the Cell is in: a controller owner reference to the Cell.
    Cell(OwnerReference),
    /// The stack is in member cluster `member_cluster`, where the Cell does not exist (an owner
    /// reference would have the member's garbage collector delete the stack, or retry forever
    /// without the Cell's kind): no owner reference, two labels instead.
    Label {
        cell_uid: String,
        member_cluster: String,
    },
}

impl Owner {
    /// How the objects of `cell` are owned in `member_cluster`; `None` is the cluster the Cell
    /// is in (what [`Target::cluster`](crate::target::Target::cluster) says).
    pub fn of(cell: &Cell, member_cluster: Option<&str>) -> Result<Self> {
        let missing = || Error::MissingObjectKey(".metadata.uid");
        match member_cluster {
            None => cell
                .controller_owner_ref(&())
                .map(Self::Cell)
                .ok_or_else(missing),
            Some(cluster) => Ok(Self::Label {
                cell_uid: cell.uid().ok_or_else(missing)?,
                member_cluster: cluster.to_owned(),
            }),
        }
    }

    /// The uid of the Cell that owns the objects.
    pub fn cell_uid(&self) -> &str {
        match self {
            Self::Cell(reference) => &reference.uid,
            Self::Label { cell_uid, .. } => cell_uid,
        }
    }

    /// Marks `meta` as the Cell's: sets the owner reference, or adds the two labels (the other
    /// labels are kept).
    pub fn mark(&self, meta: &mut ObjectMeta) {
        match self {
            Self::Cell(reference) => meta.owner_references = Some(vec![reference.clone()]),
            Self::Label {
                cell_uid,
                member_cluster,
            } => {
                let labels = meta.labels.get_or_insert_with(BTreeMap::new);
                labels.insert(CELL_UID_LABEL.to_owned(), cell_uid.clone());
                labels.insert(MEMBER_CLUSTER_LABEL.to_owned(), member_cluster.clone());
            }
        }
    }
}

/// Whether the object of `meta` is controlled by `owner`'s Cell, the way objects are owned
/// where `owner` applies: a controller owner reference with the Cell's uid in the Cell's own
/// cluster, the [`CELL_UID_LABEL`] with it in a member. Each way counts only where it is used,
/// so a hand-set label in the Cell's cluster (or an owner reference in a member) makes an
/// object nobody's, and nothing changes for the cells in the Cell's cluster.
pub fn controls(owner: &Owner, meta: &ObjectMeta) -> bool {
    match owner {
        Owner::Cell(reference) => controller_refs(meta).any(|o| o.uid == reference.uid),
        Owner::Label { cell_uid, .. } => labelled_uid(meta) == Some(cell_uid.as_str()),
    }
}

/// The name of the Cell the object of `meta` belongs to: the one its controller owner
/// reference names, or, for an object of a member cluster (it carries a [`CELL_UID_LABEL`]),
/// the one its [`CELL_LABEL`] names.
pub fn cell_of(meta: &ObjectMeta) -> Option<&str> {
    cell_controller(meta)
        .map(|o| o.name.as_str())
        .or_else(|| labelled_cell(meta))
}

/// What the cell's namespace, as found in the target, says about whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceClaim {
    /// There is none: applying the stack creates it.
    Absent,
    /// It is this cell's: the stack is applied into it.
    Ours,
    /// It is not this cell's: never adopted (applied into) nor deleted.
    Elsewhere(Holder),
}

/// Who holds a namespace that is not the cell's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Another Cell, by its uid: one re-created under the same name, or one of another
    /// management cluster that places cells in the same member.
    OtherCell { uid: String },
    /// A controller that is not a Cell, by its owner reference.
    Controller {
        kind: String,
        name: String,
        uid: String,
    },
    /// Nothing marks it: made by hand or by another tool.
    Unmarked,
}

impl Holder {
    /// Says who holds the namespace, for a condition message.
    pub fn describe(&self) -> String {
        match self {
            Self::OtherCell { uid } => format!(
                "it carries {CELL_UID_LABEL} {uid}, another Cell's (one re-created under the same name, or one of another management cluster)"
            ),
            Self::Controller { kind, name, uid } => {
                format!("it is controlled by {kind} {name} (uid {uid})")
            }
            Self::Unmarked => format!(
                "it carries no {CELL_UID_LABEL} label, so no cellstack operator made it (it was made by hand or by another tool)"
            ),
        }
    }
}

/// The adoption guard: whose the cell's namespace is, given the one found in the target
/// (`existing`, `None` when there is none) and the cell's `owner`. Anything that is not the
/// cell's by [`controls`] is someone else's.
pub fn namespace_claim(existing: Option<&ObjectMeta>, owner: &Owner) -> NamespaceClaim {
    match existing {
        None => NamespaceClaim::Absent,
        Some(meta) if controls(owner, meta) => NamespaceClaim::Ours,
        Some(meta) => NamespaceClaim::Elsewhere(holder_of(meta)),
    }
}

/// Who holds the object of `meta` besides the cell asking: the Cell its label or its
/// controller owner reference names, another controller, or nobody.
fn holder_of(meta: &ObjectMeta) -> Holder {
    if let Some(uid) = labelled_uid(meta) {
        return Holder::OtherCell {
            uid: uid.to_owned(),
        };
    }
    if let Some(cell) = cell_controller(meta) {
        return Holder::OtherCell {
            uid: cell.uid.clone(),
        };
    }
    match controller_refs(meta).next() {
        Some(o) => Holder::Controller {
            kind: o.kind.clone(),
            name: o.name.clone(),
            uid: o.uid.clone(),
        },
        None => Holder::Unmarked,
    }
}

/// The controller owner references of `meta` (the API server allows at most one).
fn controller_refs(meta: &ObjectMeta) -> impl Iterator<Item = &OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .filter(|o| o.controller == Some(true))
}

/// The controller owner reference of `meta` if it names a Cell.
fn cell_controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    let group = format!("{GROUP}/");
    controller_refs(meta).find(|o| o.kind == "Cell" && o.api_version.starts_with(&group))
}

/// The [`CELL_UID_LABEL`] of `meta`.
fn labelled_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.labels
        .as_ref()?
        .get(CELL_UID_LABEL)
        .map(String::as_str)
}

/// The [`CELL_LABEL`] of `meta` if it carries a [`CELL_UID_LABEL`] too (an object of a member).
fn labelled_cell(meta: &ObjectMeta) -> Option<&str> {
    labelled_uid(meta)?;
    meta.labels.as_ref()?.get(CELL_LABEL).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::CellFixture;

    const OTHER_UID: &str = "11111111-2222-3333-4444-555555555555";

    fn local(cell: &Cell) -> Owner {
        Owner::of(cell, None).expect("the fixture has a uid")
    }

    fn member(cell: &Cell) -> Owner {
        Owner::of(cell, Some("east")).expect("the fixture has a uid")
    }

    /// The metadata of an object of `owner`'s cell, marked as `owner` marks it.
    fn marked(owner: &Owner) -> ObjectMeta {
        let mut meta = ObjectMeta {
            labels: Some(BTreeMap::from([(
                CELL_LABEL.to_owned(),
                "alpha".to_owned(),
            )])),
            ..ObjectMeta::default()
        };
        owner.mark(&mut meta);
        meta
    }

    fn controlled_by(kind: &str, api_version: &str, uid: &str) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                api_version: api_version.into(),
                kind: kind.into(),
                name: "other".into(),
                uid: uid.into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        }
    }

    fn labelled(uid: &str) -> ObjectMeta {
        ObjectMeta {
            labels: Some(BTreeMap::from([
                (CELL_LABEL.to_owned(), "alpha".to_owned()),
                (CELL_UID_LABEL.to_owned(), uid.to_owned()),
            ])),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_local_owner_is_a_controller_reference_and_a_member_owner_two_labels() {
        let cell = Cell::test("alpha");
        let uid = cell.uid().expect("uid");
        let here = marked(&local(&cell));
        let reference = &here.owner_references.as_ref().expect("owner reference")[0];
        assert_eq!(
            (reference.kind.as_str(), reference.uid.as_str()),
            ("Cell", uid.as_str())
        );
        assert_eq!(reference.controller, Some(true));
        assert_eq!(here.labels.as_ref().map(BTreeMap::len), Some(1));

        let there = marked(&member(&cell));
        assert_eq!(there.owner_references, None);
        let labels = there.labels.expect("labels");
        assert_eq!(labels[CELL_UID_LABEL], uid);
        assert_eq!(labels[MEMBER_CLUSTER_LABEL], "east");
        assert_eq!(labels[CELL_LABEL], "alpha", "other labels are kept");
        assert_eq!(member(&cell).cell_uid(), uid);
        assert_eq!(local(&cell).cell_uid(), uid);
    }

    #[test]
    fn a_cell_without_a_uid_has_no_owner_anywhere() {
        let mut cell = Cell::test("alpha");
        cell.metadata.uid = None;
        assert!(Owner::of(&cell, None).is_err());
        assert!(Owner::of(&cell, Some("east")).is_err());
    }

    #[test]
    fn a_cell_controls_by_owner_reference_locally_and_by_label_in_a_member() {
        let cell = Cell::test("alpha");
        let (here, there) = (local(&cell), member(&cell));
        assert!(controls(&here, &marked(&here)));
        assert!(controls(&there, &marked(&there)));
        // Each way counts only where it is used.
        assert!(!controls(&here, &marked(&there)));
        assert!(!controls(&there, &marked(&here)));
    }

    #[test]
    fn a_cell_does_not_control_what_another_uid_or_nothing_marks() {
        let cell = Cell::test("alpha");
        let (here, there) = (local(&cell), member(&cell));
        let api_version = Cell::api_version(&()).into_owned();
        for owner in [&here, &there] {
            assert!(!controls(
                owner,
                &controlled_by("Cell", &api_version, OTHER_UID)
            ));
            assert!(!controls(owner, &labelled(OTHER_UID)));
            assert!(!controls(owner, &ObjectMeta::default()));
        }
        // An owner reference with the uid but not as controller does not control.
        let mut not_controller = marked(&here);
        if let Some(reference) = not_controller.owner_references.as_mut() {
            reference[0].controller = Some(false);
        }
        assert!(!controls(&here, &not_controller));
    }

    #[test]
    fn an_object_maps_to_its_cell_by_owner_reference_or_in_a_member_by_label() {
        let cell = Cell::test("alpha");
        assert_eq!(cell_of(&marked(&local(&cell))), Some("alpha"));
        assert_eq!(cell_of(&marked(&member(&cell))), Some("alpha"));
        // The cell label alone (without a uid label or an owner reference) names no owner.
        let unowned = ObjectMeta {
            labels: Some(BTreeMap::from([(
                CELL_LABEL.to_owned(),
                "alpha".to_owned(),
            )])),
            ..ObjectMeta::default()
        };
        assert_eq!(cell_of(&unowned), None);
        // Neither does a controller that is not a Cell.
        assert_eq!(
            cell_of(&controlled_by("Deployment", "apps/v1", OTHER_UID)),
            None
        );
    }

    #[test]
    fn a_missing_namespace_is_created_and_ours_is_applied_into() {
        let cell = Cell::test("alpha");
        for owner in [local(&cell), member(&cell)] {
            assert_eq!(namespace_claim(None, &owner), NamespaceClaim::Absent);
            assert_eq!(
                namespace_claim(Some(&marked(&owner)), &owner),
                NamespaceClaim::Ours
            );
        }
    }

    #[test]
    fn a_namespace_of_another_cell_uid_is_held_elsewhere() {
        let cell = Cell::test("alpha");
        let api_version = Cell::api_version(&()).into_owned();
        let other = Holder::OtherCell {
            uid: OTHER_UID.to_owned(),
        };
        for owner in [local(&cell), member(&cell)] {
            assert_eq!(
                namespace_claim(Some(&labelled(OTHER_UID)), &owner),
                NamespaceClaim::Elsewhere(other.clone())
            );
            assert_eq!(
                namespace_claim(
                    Some(&controlled_by("Cell", &api_version, OTHER_UID)),
                    &owner
                ),
                NamespaceClaim::Elsewhere(other.clone())
            );
        }
        assert!(other.describe().contains(OTHER_UID), "{}", other.describe());
    }

    #[test]
    fn a_namespace_of_a_foreign_controller_or_of_nobody_is_held_elsewhere() {
        let owner = member(&Cell::test("alpha"));
        let foreign = controlled_by("Project", "example.com/v1", OTHER_UID);
        let NamespaceClaim::Elsewhere(holder) = namespace_claim(Some(&foreign), &owner) else {
            panic!("a foreign controller's namespace is not ours");
        };
        assert_eq!(
            holder,
            Holder::Controller {
                kind: "Project".into(),
                name: "other".into(),
                uid: OTHER_UID.into(),
            }
        );
        assert!(holder.describe().contains("Project other"));
        assert_eq!(
            namespace_claim(Some(&ObjectMeta::default()), &owner),
            NamespaceClaim::Elsewhere(Holder::Unmarked)
        );
    }
}
