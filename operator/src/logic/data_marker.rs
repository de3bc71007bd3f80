//! Whether a cell still holds a tenant's data: the tenant's record there, judged against the
//! marker the TenantAssignment's status keeps outside the datastore.
//!
//! The operator gives a tenant's data a random marker when it creates the tenant's record in its
//! cell, stores the marker with the record and in `status.dataMarker`, and carries it on every
//! move. A datastore that later answers without the record (an `Ephemeral` cell restarted, a
//! volume lost) or with another marker has lost the data the marker names. A key count or a
//! digest alone could not say so: an emptied tenant and a new one look the same.

use cellstack_api::admin::{TenantRecord, TenantState};

/// What to do about a tenant's record in the cell that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// The record is there with the tenant's marker: nothing to do.
    Intact,
    /// A tenant that never had a record: create one, with a new marker, and keep that marker in
    /// the status.
    Create,
    /// A record without a marker (made before markers existed): give it `marker` (the status'
    /// one, or a new one) and keep it in the status.
    Adopt { marker: Option<String> },
    /// The status names a marker whose data the cell does not hold any more: mark the tenant
    /// lost there (so it answers `503 data_unavailable`, never as an empty tenant) and report it.
    Lost { marker: String, found: String },
    /// The cell already answers the tenant as lost.
    StillLost { marker: Option<String> },
}

/// Judges `record` (the cell's answer) against `expected` (the status' marker).
pub fn judge(record: Option<&TenantRecord>, expected: Option<&str>) -> Judgement {
    match (record, expected) {
        (Some(r), _) if r.state == TenantState::Lost => Judgement::StillLost {
            marker: r.marker.clone().or_else(|| expected.map(str::to_owned)),
        },
        (None, None) => Judgement::Create,
        (None, Some(m)) => Judgement::Lost {
            marker: m.to_owned(),
            found: "no record: the cell's datastore holds nothing for the tenant".to_owned(),
        },
        (Some(r), expected) => match (r.marker.as_deref(), expected) {
            (Some(have), Some(want)) if have == want => Judgement::Intact,
            (Some(have), Some(want)) => Judgement::Lost {
                marker: want.to_owned(),
                found: format!("a record carrying marker {have}, not {want}: other data"),
            },
            (Some(have), None) => Judgement::Adopt {
                marker: Some(have.to_owned()),
            },
            (None, expected) => Judgement::Adopt {
                marker: expected.map(str::to_owned),
            },
        },
    }
}

/// A new marker: 16 random bytes, hex (what `cellstack_api::admin::valid_marker` accepts).
pub fn new_marker() -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: TenantState, marker: Option<&str>) -> TenantRecord {
        TenantRecord {
            state,
            epoch: 3,
            moved_to: None,
            tracking: false,
            marker: marker.map(str::to_owned),
        }
    }

    #[test]
    fn a_record_with_the_status_marker_is_intact() {
        let r = record(TenantState::Active, Some("aaaa"));
        assert_eq!(judge(Some(&r), Some("aaaa")), Judgement::Intact);
    }

    #[test]
    fn no_record_is_a_new_tenant_without_a_marker_and_a_loss_with_one() {
        assert_eq!(judge(None, None), Judgement::Create);
        let Judgement::Lost { marker, found } = judge(None, Some("aaaa")) else {
            panic!("a missing record with a marker in status is a loss");
        };
        assert_eq!(marker, "aaaa");
        assert!(found.contains("no record"), "{found}");
    }

    #[test]
    fn a_record_with_another_marker_is_a_loss_of_the_status_one() {
        let r = record(TenantState::Active, Some("bbbb"));
        let Judgement::Lost { marker, found } = judge(Some(&r), Some("aaaa")) else {
            panic!("another marker means other data");
        };
        assert_eq!(marker, "aaaa");
        assert!(found.contains("bbbb"), "{found}");
    }

    #[test]
    fn an_unmarked_record_is_adopted_with_the_status_marker_or_its_own() {
        let unmarked = record(TenantState::Active, None);
        assert_eq!(
            judge(Some(&unmarked), Some("aaaa")),
            Judgement::Adopt {
                marker: Some("aaaa".into())
            }
        );
        assert_eq!(
            judge(Some(&unmarked), None),
            Judgement::Adopt { marker: None }
        );
        let marked = record(TenantState::Fenced, Some("cccc"));
        assert_eq!(
            judge(Some(&marked), None),
            Judgement::Adopt {
                marker: Some("cccc".into())
            }
        );
    }

    #[test]
    fn a_lost_record_stays_lost_whatever_the_status_says() {
        let lost = record(TenantState::Lost, Some("aaaa"));
        for expected in [None, Some("aaaa"), Some("bbbb")] {
            assert_eq!(
                judge(Some(&lost), expected),
                Judgement::StillLost {
                    marker: Some("aaaa".into())
                }
            );
        }
    }

    #[test]
    fn new_markers_are_valid_and_differ() {
        let (a, b) = (new_marker(), new_marker());
        assert!(cellstack_api::admin::valid_marker(&a), "{a}");
        assert_ne!(a, b);
    }
}
