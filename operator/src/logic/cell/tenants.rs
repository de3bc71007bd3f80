//! Which tenants a cell holds, from the TenantAssignments: pure, so deletion protection and the
//! tenant count are tested without an API server.

use std::collections::BTreeSet;

use cellstack_api::v1alpha1::MoveStep;

use crate::cached_tenant::CachedTenant;

/// The cells a TenantAssignment concerns: the one serving it, the one it is pinned to, and
/// both ends of a move in progress. A change to the assignment may change each one's count.
pub fn cells_of(ta: &CachedTenant) -> BTreeSet<String> {
    let mut cells = BTreeSet::new();
    if let Some(cell) = &ta.spec.cell {
        cells.insert(cell.to_string());
    }
    if let Some(status) = &ta.status {
        if let Some(cell) = &status.cell {
            cells.insert(cell.clone());
        }
        if let Some(mv) = &status.move_ {
            cells.insert(mv.from.clone());
            cells.insert(mv.to.clone());
        }
    }
    cells
}

/// Whether `cell` holds the tenant: it serves it, it is either end of a move still under way,
/// or the tenant is pinned to it and not yet placed anywhere.
pub fn holds(cell: &str, ta: &CachedTenant) -> bool {
    let status = ta.status.as_ref();
    let serving = status.and_then(|s| s.cell.as_deref());
    if serving == Some(cell) {
        return true;
    }
    // Both ends of a move under way hold it: the target has (part of) its data, and the
    // source keeps its copy until Cleanup has purged it.
    let moving_here = status.and_then(|s| s.move_.as_ref()).is_some_and(|mv| {
        (mv.to == cell || mv.from == cell)
            && !matches!(mv.step, MoveStep::Done | MoveStep::RolledBack)
    });
    let pinned_unplaced = serving.is_none() && ta.spec.cell.as_deref() == Some(cell);
    moving_here || pinned_unplaced
}

/// How many tenants `cell` holds: [`held_by`]'s length, without copying an id (a cell's status
/// is computed on every reconcile, and a cell may hold tens of thousands).
pub fn count_held<'a>(cell: &str, assignments: impl IntoIterator<Item = &'a CachedTenant>) -> u32 {
    let held = assignments.into_iter().filter(|ta| holds(cell, ta)).count();
    u32::try_from(held).unwrap_or(u32::MAX)
}

/// The tenant ids `cell` holds, sorted.
pub fn held_by<'a>(
    cell: &str,
    assignments: impl IntoIterator<Item = &'a CachedTenant>,
) -> Vec<String> {
    let mut ids: Vec<String> = assignments
        .into_iter()
        .filter(|ta| holds(cell, ta))
        .map(|ta| ta.tenant_id().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The tenants whose data `cell`'s datastore lost, while unresolved (sorted ids).
pub fn lost_in<'a>(
    cell: &str,
    assignments: impl IntoIterator<Item = &'a CachedTenant>,
) -> Vec<String> {
    let mut ids: Vec<String> = assignments
        .into_iter()
        .filter(|ta| {
            ta.status
                .as_ref()
                .and_then(|s| s.data_loss.as_ref())
                .is_some_and(|loss| loss.cell == cell)
        })
        .map(|ta| ta.tenant_id().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The tenants whose record `cell`'s datastore must hold (sorted ids): those it serves that were
/// given a record there (their status keeps the data's marker) and those whose loss it reported
/// (their record there says so). What the operator names when it confirms the datastore
/// (`cellstack_api::admin::DATASTORE_PATH`); a tenant still being placed or moved in has a
/// record that appears on its own schedule, so it is left out rather than block the confirmation.
pub fn recorded_in<'a>(
    cell: &str,
    assignments: impl IntoIterator<Item = &'a CachedTenant>,
) -> Vec<String> {
    let mut ids: Vec<String> = assignments
        .into_iter()
        .filter(|ta| {
            ta.status.as_ref().is_some_and(|s| {
                (s.cell.as_deref() == Some(cell) && s.data_marker.is_some())
                    || s.data_loss.as_ref().is_some_and(|loss| loss.cell == cell)
            })
        })
        .map(|ta| ta.tenant_id().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The first `n` ids joined for a message, with how many more there are.
pub fn first_few(ids: &[String], n: usize) -> String {
    let shown = ids.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > n {
        format!("{shown} and {} more", ids.len() - n)
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::TenantFixture;

    #[test]
    fn a_cell_holds_the_tenants_it_serves_and_those_pinned_to_it_but_unplaced() {
        let tenants = [
            CachedTenant::test("a").served_by("alpha"),
            CachedTenant::test("b").pinned_to("alpha"),
            CachedTenant::test("c")
                .pinned_to("alpha")
                .served_by("bravo"),
            CachedTenant::test("d").automatic(),
            CachedTenant::test("e").served_by("bravo"),
        ];
        assert_eq!(held_by("alpha", &tenants), ["a", "b"]);
        assert_eq!(held_by("bravo", &tenants), ["c", "e"]);
        assert!(held_by("charlie", &tenants).is_empty());
        for cell in ["alpha", "bravo", "charlie"] {
            assert_eq!(
                count_held(cell, &tenants) as usize,
                held_by(cell, &tenants).len(),
                "{cell}"
            );
        }
    }

    #[test]
    fn the_target_of_a_move_under_way_holds_the_tenant_too() {
        let moving = CachedTenant::test("m").moving("alpha", "bravo", MoveStep::Copy);
        assert!(holds("alpha", &moving));
        assert!(holds("bravo", &moving));
        let rolled_back = CachedTenant::test("r").moving("alpha", "bravo", MoveStep::RolledBack);
        assert!(!holds("bravo", &rolled_back));
        assert_eq!(
            cells_of(&rolled_back).into_iter().collect::<Vec<_>>(),
            ["alpha", "bravo"]
        );
    }

    #[test]
    fn a_cell_must_hold_the_records_of_the_tenants_it_serves_with_a_marker_or_reported_lost() {
        let marked = |ta: CachedTenant| {
            let mut ta = ta;
            if let Some(s) = ta.status.as_mut() {
                s.data_marker = Some("0123456789abcdef".into());
            }
            ta
        };
        let mut lost = marked(CachedTenant::test("lost").served_by("alpha"));
        if let Some(s) = lost.status.as_mut() {
            s.data_loss = Some(Box::new(cellstack_api::v1alpha1::DataLoss {
                marker: "0123456789abcdef".into(),
                cell: "alpha".into(),
                ..Default::default()
            }));
        }
        let tenants = [
            marked(CachedTenant::test("served").served_by("alpha")),
            CachedTenant::test("unprovisioned").served_by("alpha"),
            marked(CachedTenant::test("elsewhere").served_by("bravo")),
            marked(CachedTenant::test("incoming").moving("bravo", "alpha", MoveStep::Copy)),
            lost,
        ];
        assert_eq!(recorded_in("alpha", &tenants), ["lost", "served"]);
        assert_eq!(recorded_in("bravo", &tenants), ["elsewhere", "incoming"]);
    }

    #[test]
    fn first_few_says_how_many_are_left_out() {
        let ids: Vec<String> = (1..=7).map(|i| format!("t{i}")).collect();
        assert_eq!(first_few(&ids, 5), "t1, t2, t3, t4, t5 and 2 more");
        assert_eq!(first_few(&ids[..2], 5), "t1, t2");
    }
}
