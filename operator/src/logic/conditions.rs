//! Status conditions: built from plain values, merged so `lastTransitionTime` only moves when a
//! condition's status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as the reconciler decides it, before times are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    /// `None`: `Unknown` (the operator cannot tell).
    pub status: Option<bool>,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: Some(status),
            reason,
            message: message.into(),
        }
    }

    /// A condition whose status the operator cannot tell (`Unknown`).
    pub fn unknown(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: None,
            reason,
            message: message.into(),
        }
    }
}

fn status_str(status: Option<bool>) -> &'static str {
    match status {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    }
}

/// The conditions to publish: `desired` in order, each keeping the `lastTransitionTime` of the
/// `previous` condition of its type when its status did not change, and `now` when it did (or is
/// new).
pub fn merge(
    previous: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = status_str(d.status);
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == d.type_ && p.status == status)
                .map_or_else(|| now.clone(), |p| p.last_transition_time.clone());
            Condition {
                type_: d.type_.to_owned(),
                status: status.to_owned(),
                reason: d.reason.to_owned(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The conditions whose status or reason differs from `previous` (or that are new): the
/// transitions that deserve an Event.
pub fn changed<'a>(previous: &[Condition], merged: &'a [Condition]) -> Vec<&'a Condition> {
    merged
        .iter()
        .filter(|c| {
            !previous
                .iter()
                .any(|p| p.type_ == c.type_ && p.status == c.status && p.reason == c.reason)
        })
        .collect()
}

/// Whether condition `type_` is `True` in `conditions`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid timestamp"))
    }

    #[test]
    fn transition_time_is_kept_while_status_holds() {
        let first = merge(
            &[],
            &[Desired::new("Ready", true, "AllLanesReady", "ok")],
            Some(1),
            &at(10),
        );
        let second = merge(
            &first,
            &[Desired::new("Ready", true, "AllLanesReady", "still ok")],
            Some(2),
            &at(20),
        );
        assert_eq!(second[0].last_transition_time, at(10));
        assert_eq!(second[0].observed_generation, Some(2));
        assert_eq!(second[0].message, "still ok");
        assert!(changed(&first, &second).is_empty());
    }

    #[test]
    fn transition_time_moves_when_status_flips() {
        let first = merge(
            &[],
            &[Desired::new("Ready", true, "AllLanesReady", "ok")],
            Some(1),
            &at(10),
        );
        let second = merge(
            &first,
            &[Desired::new("Ready", false, "LanesNotReady", "1/2")],
            Some(1),
            &at(20),
        );
        assert_eq!(second[0].last_transition_time, at(20));
        assert_eq!(second[0].status, "False");
        assert_eq!(changed(&first, &second).len(), 1);
    }

    #[test]
    fn a_new_reason_counts_as_a_change_even_without_a_flip() {
        let first = merge(
            &[],
            &[Desired::new("Progressing", true, "Provisioning", "")],
            None,
            &at(1),
        );
        let second = merge(
            &first,
            &[Desired::new("Progressing", true, "DeletionBlocked", "t1")],
            None,
            &at(2),
        );
        assert_eq!(changed(&first, &second).len(), 1);
        assert_eq!(
            second[0].last_transition_time,
            at(1),
            "no flip, so the time stays"
        );
        let merged = merge(
            &[],
            &[Desired::new("Degraded", false, "Healthy", "")],
            None,
            &at(1),
        );
        assert_eq!(changed(&[], &merged).len(), 1);
        assert!(!is_true(&merged, "Degraded"));
    }
}
