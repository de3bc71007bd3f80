//! Phase 2 of admission: is this cell serving the tenant, at the epoch the request carries?
//!
//! Contract: given the tenant's record in this cell (or none) and the request's epoch and kind,
//! return `Ok` or the refusal to answer with. Reads are served while the tenant is fenced;
//! writes are not. The write script (`scripts::WRITE`) applies the same rules atomically at write
//! time, so a fence set between this check and the write still stops the write.

use cellstack_api::{
    admin::{TenantRecord, TenantState},
    wire::ErrorCode,
};

/// Why a request for a tenant is refused by this cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    /// No record, and the datastore does not carry the operator's confirmation that it holds
    /// every tenant placed in the cell: it may have come back without its data.
    Unconfirmed,
    Importing,
    DataLost,
    Moved {
        to: String,
        epoch: u64,
    },
    Stale {
        current: u64,
        requested: u64,
    },
    Fenced,
}

impl Refusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unknown => ErrorCode::UnknownTenant,
            Self::Importing | Self::Fenced => ErrorCode::Fenced,
            Self::DataLost | Self::Unconfirmed => ErrorCode::DataUnavailable,
            Self::Moved { .. } => ErrorCode::Moved,
            Self::Stale { .. } => ErrorCode::StaleEpoch,
        }
    }

    pub fn message(&self, tenant: &str) -> String {
        match self {
            Self::Unknown => format!("tenant {tenant} is not served by this cell"),
            Self::Unconfirmed => format!(
                "this cell's datastore holds no record of tenant {tenant} and has not been confirmed complete since it started: it may have lost its data; the operator checks every tenant of the cell shortly (retry, or see the TenantAssignment's DataLost condition)"
            ),
            Self::Importing => {
                format!("tenant {tenant} is being imported into this cell; retry shortly")
            }
            Self::DataLost => format!(
                "the data of tenant {tenant} was lost by this cell's datastore; nothing is served for it until it is restored or the loss is accepted (its TenantAssignment's DataLost condition says how)"
            ),
            Self::Moved { to, .. } => format!("tenant {tenant} moved to cell {to}"),
            Self::Stale { current, requested } if requested < current => format!(
                "epoch {requested} is stale: tenant {tenant} is at epoch {current}; refresh the route and retry"
            ),
            Self::Stale { current, requested } => format!(
                "epoch {requested} is newer than this cell's epoch {current} for tenant {tenant}: the tenant may have moved; refresh the route and retry"
            ),
            Self::Fenced => {
                format!("writes for tenant {tenant} are paused while it moves; retry shortly")
            }
        }
    }
}

/// The admission decision for one request.
pub fn check(
    record: Option<&TenantRecord>,
    epoch: Option<u64>,
    write: bool,
) -> Result<(), Refusal> {
    let record = record.ok_or(Refusal::Unknown)?;
    match record.state {
        TenantState::Importing => return Err(Refusal::Importing),
        TenantState::Lost => return Err(Refusal::DataLost),
        TenantState::Moved => {
            return Err(Refusal::Moved {
                to: record.moved_to.clone().unwrap_or_default(),
                epoch: record.epoch,
            });
        }
        TenantState::Active | TenantState::Fenced => {}
    }
    if let Some(requested) = epoch
        && requested != record.epoch
    {
        return Err(Refusal::Stale {
            current: record.epoch,
            requested,
        });
    }
    if write && record.state == TenantState::Fenced {
        return Err(Refusal::Fenced);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: TenantState, epoch: u64) -> TenantRecord {
        TenantRecord {
            state,
            epoch,
            moved_to: (state == TenantState::Moved).then(|| "bravo".to_owned()),
            tracking: false,
            marker: None,
        }
    }

    #[test]
    fn an_active_tenant_is_served_at_its_epoch_or_without_one() {
        let r = record(TenantState::Active, 3);
        assert_eq!(check(Some(&r), Some(3), true), Ok(()));
        assert_eq!(check(Some(&r), None, true), Ok(()));
    }

    #[test]
    fn a_fenced_tenant_serves_reads_and_refuses_writes() {
        let r = record(TenantState::Fenced, 3);
        assert_eq!(check(Some(&r), Some(3), false), Ok(()));
        assert_eq!(check(Some(&r), Some(3), true), Err(Refusal::Fenced));
    }

    #[test]
    fn an_older_or_newer_epoch_is_stale() {
        let r = record(TenantState::Active, 3);
        assert_eq!(
            check(Some(&r), Some(2), false),
            Err(Refusal::Stale {
                current: 3,
                requested: 2
            })
        );
        assert_eq!(
            check(Some(&r), Some(4), false),
            Err(Refusal::Stale {
                current: 3,
                requested: 4
            })
        );
        assert!(
            Refusal::Stale {
                current: 3,
                requested: 2
            }
            .message("t")
            .contains("stale")
        );
    }

    #[test]
    fn moved_unknown_and_importing_tenants_are_refused_with_their_codes() {
        let moved = record(TenantState::Moved, 4);
        assert_eq!(
            check(Some(&moved), Some(3), false),
            Err(Refusal::Moved {
                to: "bravo".into(),
                epoch: 4
            })
        );
        assert_eq!(
            check(None, None, false).unwrap_err().code(),
            ErrorCode::UnknownTenant
        );
        let importing = record(TenantState::Importing, 1);
        assert_eq!(
            check(Some(&importing), None, false),
            Err(Refusal::Importing)
        );
        assert!(
            Refusal::Fenced.code().nothing_applied() && Refusal::Unknown.code().nothing_applied()
        );
    }

    #[test]
    fn a_tenant_whose_data_was_lost_is_refused_reads_and_writes_as_data_unavailable() {
        let lost = record(TenantState::Lost, 2);
        for write in [false, true] {
            assert_eq!(check(Some(&lost), Some(2), write), Err(Refusal::DataLost));
            assert_eq!(check(Some(&lost), None, write), Err(Refusal::DataLost));
        }
        let code = Refusal::DataLost.code();
        assert_eq!((code, code.status()), (ErrorCode::DataUnavailable, 503));
        assert!(Refusal::DataLost.message("t").contains("DataLost"));
    }
}
