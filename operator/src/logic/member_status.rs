//! A MemberCluster's status from what one reconcile observed: its two conditions, the version
//! and the last contact, with the time injected. A member that stops answering keeps its last
//! known version and contact; `lastContact` moves at most every [`CONTACT_REFRESH`] while it keeps
//! answering, so a healthy member costs a status write every 30 s, not one per probe.

use std::time::Duration;

use cellstack_api::v1alpha1::{MemberClusterStatus, member_condition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::conditions::{self, Desired};

/// Least time between two refreshes of `lastContact` while the member keeps answering.
pub const CONTACT_REFRESH: Duration = Duration::from_secs(30);
/// Failed probes in a row before a reachable member is reported `Reachable=False`: one lost
/// packet or a busy API server is not an outage (at a probe every 10 s, about 30 s: the order of
/// the node lifecycle controller's grace period). A member never reached is reported at once.
pub const FAILURES_BEFORE_UNREACHABLE: u32 = 3;

pub mod reason {
    /// CredentialsValid=True: the kubeconfig is accepted and a client was built from it.
    pub const PARSED: &str = "Parsed";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const KEY_NOT_FOUND: &str = "KeyNotFound";
    /// Not a kubeconfig kube can use (YAML, no current context, no server...).
    pub const INVALID_KUBECONFIG: &str = "InvalidKubeconfig";
    /// A kubeconfig with files, commands, auth providers, a proxy or TLS verification skipped.
    pub const UNSUPPORTED_KUBECONFIG: &str = "UnsupportedKubeconfig";
    /// Reachable=True.
    pub const CONTACTED: &str = "Contacted";
    /// Reachable=False: the probe failed or timed out.
    pub const UNREACHABLE: &str = "Unreachable";
    /// Reachable=False: no probe, because the credentials are not usable.
    pub const NOT_CONTACTED: &str = "NotContacted";
}

/// What one reconcile found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Credentials unusable: `reason` one of the `CredentialsValid=False` reasons of [`reason`].
    CredentialsInvalid {
        reason: &'static str,
        message: String,
    },
    /// The API server answered `GET /version` with `version`.
    Contacted { version: String },
    /// The probe failed: `error` says how; `in_a_row` counts this one and the failures just
    /// before it.
    Unreachable { error: String, in_a_row: u32 },
}

/// The status to publish, given the `previous` one, what was `observed` of the spec at
/// `generation`, and `now`.
pub fn compute(
    previous: &MemberClusterStatus,
    observed: &Observed,
    generation: Option<i64>,
    now: &Time,
) -> MemberClusterStatus {
    let (credentials, reachable) = match observed {
        Observed::CredentialsInvalid { reason, message } => (
            Desired::new(
                member_condition::CREDENTIALS_VALID,
                false,
                reason,
                message.clone(),
            ),
            Desired::new(
                member_condition::REACHABLE,
                false,
                reason::NOT_CONTACTED,
                "not contacted: the credentials are not usable (see CredentialsValid)",
            ),
        ),
        Observed::Contacted { version } => (
            valid_credentials(),
            Desired::new(
                member_condition::REACHABLE,
                true,
                reason::CONTACTED,
                format!("the API server answered GET /version: {version}"),
            ),
        ),
        Observed::Unreachable { in_a_row, .. }
            if *in_a_row < FAILURES_BEFORE_UNREACHABLE
                && conditions::is_true(&previous.conditions, member_condition::REACHABLE) =>
        {
            (valid_credentials(), still_reachable(previous))
        }
        Observed::Unreachable { error, in_a_row } => (
            valid_credentials(),
            Desired::new(
                member_condition::REACHABLE,
                false,
                reason::UNREACHABLE,
                // Nothing is changed in or for the member because of this.
                format!(
                    "the API server did not answer GET /version ({in_a_row} probe(s) in a row): {error}"
                ),
            ),
        ),
    };
    let conditions = conditions::merge(
        &previous.conditions,
        &[credentials, reachable],
        generation,
        now,
    );
    let (kubernetes_version, last_contact) = match observed {
        Observed::Contacted { version } => {
            let fresh = previous.last_contact.as_ref().is_some_and(|last| {
                Duration::try_from(now.0.duration_since(last.0))
                    .is_ok_and(|age| age < CONTACT_REFRESH)
            });
            let contact = if fresh {
                previous.last_contact.clone()
            } else {
                Some(now.clone())
            };
            (Some(version.clone()), contact)
        }
        _ => (
            previous.kubernetes_version.clone(),
            previous.last_contact.clone(),
        ),
    };
    MemberClusterStatus {
        observed_generation: generation,
        conditions,
        kubernetes_version,
        last_contact,
    }
}

/// The `Reachable=True` condition of `previous`, unchanged: a failure or two in a row are not
/// reported (see [`FAILURES_BEFORE_UNREACHABLE`]).
fn still_reachable(previous: &MemberClusterStatus) -> Desired {
    let message = previous
        .conditions
        .iter()
        .find(|c| c.type_ == member_condition::REACHABLE)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    Desired::new(
        member_condition::REACHABLE,
        true,
        reason::CONTACTED,
        message,
    )
}

fn valid_credentials() -> Desired {
    Desired::new(
        member_condition::CREDENTIALS_VALID,
        true,
        reason::PARSED,
        "the kubeconfig is self-contained (inline credentials and CA)",
    )
}

/// Whether a changed condition deserves a `Warning` Event (else `Normal`), and whether it
/// deserves one at all: `NotContacted` only repeats the CredentialsValid Event.
pub fn event_of(condition: &Condition) -> Option<bool> {
    if condition.reason == reason::NOT_CONTACTED {
        return None;
    }
    Some(condition.status != "True")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid timestamp"))
    }

    fn contacted() -> Observed {
        Observed::Contacted {
            version: "v1.34.4".into(),
        }
    }

    fn condition<'a>(status: &'a MemberClusterStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    #[test]
    fn a_contacted_member_is_reachable_with_its_version_and_contact() {
        let s = compute(&Default::default(), &contacted(), Some(2), &at(100));
        assert_eq!(condition(&s, member_condition::REACHABLE).status, "True");
        assert_eq!(
            condition(&s, member_condition::CREDENTIALS_VALID).reason,
            reason::PARSED
        );
        assert_eq!(s.kubernetes_version.as_deref(), Some("v1.34.4"));
        assert_eq!(s.last_contact, Some(at(100)));
        assert_eq!(s.observed_generation, Some(2));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
    }

    #[test]
    fn last_contact_moves_at_most_every_thirty_seconds_so_a_healthy_member_is_not_rewritten() {
        let first = compute(&Default::default(), &contacted(), Some(1), &at(100));
        let again = compute(&first, &contacted(), Some(1), &at(129));
        assert_eq!(again, first, "nothing to write 29 s later");
        let later = compute(&first, &contacted(), Some(1), &at(130));
        assert_eq!(later.last_contact, Some(at(130)));
    }

    fn failed(in_a_row: u32) -> Observed {
        Observed::Unreachable {
            error: "connection refused".into(),
            in_a_row,
        }
    }

    #[test]
    fn a_reachable_member_stays_reachable_through_two_failed_probes() {
        let first = compute(&Default::default(), &contacted(), Some(1), &at(100));
        let once = compute(&first, &failed(1), Some(1), &at(110));
        assert_eq!(once, first, "nothing to write after one failure");
        let twice = compute(&once, &failed(2), Some(1), &at(120));
        assert_eq!(twice, first, "nothing to write after two");
        let third = compute(&twice, &failed(3), Some(1), &at(130));
        assert_eq!(
            condition(&third, member_condition::REACHABLE).status,
            "False"
        );
    }

    #[test]
    fn a_member_never_reached_is_unreachable_at_the_first_failure() {
        let s = compute(&Default::default(), &failed(1), Some(1), &at(100));
        let reachable = condition(&s, member_condition::REACHABLE);
        assert_eq!(
            (reachable.status.as_str(), reachable.reason.as_str()),
            ("False", reason::UNREACHABLE)
        );
    }

    #[test]
    fn an_unreachable_member_keeps_its_last_version_and_contact() {
        let first = compute(&Default::default(), &contacted(), Some(1), &at(100));
        let down = compute(&first, &failed(3), Some(1), &at(200));
        let reachable = condition(&down, member_condition::REACHABLE);
        assert_eq!(reachable.status, "False");
        assert_eq!(reachable.reason, reason::UNREACHABLE);
        assert!(reachable.message.contains("connection refused"));
        assert_eq!(reachable.last_transition_time, at(200));
        assert_eq!(down.kubernetes_version.as_deref(), Some("v1.34.4"));
        assert_eq!(down.last_contact, Some(at(100)));
        let changed = conditions::changed(&first.conditions, &down.conditions);
        assert_eq!(changed.len(), 1);
        assert_eq!(event_of(changed[0]), Some(true), "a Warning");
    }

    #[test]
    fn invalid_credentials_are_not_contacted_and_warn_once() {
        let s = compute(
            &Default::default(),
            &Observed::CredentialsInvalid {
                reason: reason::UNSUPPORTED_KUBECONFIG,
                message: "users[x].user.exec is not accepted".into(),
            },
            Some(1),
            &at(1),
        );
        let creds = condition(&s, member_condition::CREDENTIALS_VALID);
        assert_eq!(
            (creds.status.as_str(), creds.reason.as_str()),
            ("False", reason::UNSUPPORTED_KUBECONFIG)
        );
        assert_eq!(
            condition(&s, member_condition::REACHABLE).reason,
            reason::NOT_CONTACTED
        );
        assert_eq!(s.last_contact, None);
        let events: Vec<_> = conditions::changed(&[], &s.conditions)
            .into_iter()
            .filter_map(event_of)
            .collect();
        assert_eq!(events, [true], "one Warning, for CredentialsValid");
    }
}
