//! The health gate: a wave's cells over the bake, judged against the cells not yet updated
//! over the same window. Pure; the readings come from the lanes' own `/metrics`
//! ([`cellstack_api::health`]).

use cellstack_api::{health::Counts, v1alpha1::HealthGate};

use super::rollout_plan::Verdict;

/// Judges one updated cell's window against the baseline's (the cells not yet updated, summed;
/// `None` when none are left).
pub fn judge(gate: &HealthGate, cell: &Counts, baseline: Option<&Counts>) -> Verdict {
    if cell.requests < gate.min_requests {
        return Verdict::Inconclusive(format!(
            "{} of the {} requests needed",
            cell.requests, gate.min_requests
        ));
    }
    let errors = cell.error_rate();
    let p99 = cell.quantile(0.99).map(|s| s * 1000.0);
    // A baseline that served nothing says nothing.
    let baseline = baseline.filter(|b| b.requests > 0);
    let base_errors = baseline.map_or(0.0, Counts::error_rate);
    let base_p99 = baseline.and_then(|b| b.quantile(0.99)).map(|s| s * 1000.0);
    let reading = format!(
        "{} req, errors {:.1}% (baseline {}), p99 {} (baseline {})",
        cell.requests,
        errors * 100.0,
        baseline.map_or("none".to_owned(), |_| format!(
            "{:.1}%",
            base_errors * 100.0
        )),
        ms(p99),
        ms(base_p99),
    );
    if errors - base_errors > gate.max_error_rate_increase {
        return Verdict::Fail(format!(
            "{reading}; errors exceed the baseline by more than {:.1} points",
            gate.max_error_rate_increase * 100.0
        ));
    }
    if let (Some(p99), Some(base)) = (p99, base_p99)
        && p99 > base * gate.max_p99_ratio
        && p99 - base > f64::from(gate.p99_tolerance_ms)
    {
        return Verdict::Fail(format!(
            "{reading}; p99 over {}x the baseline and {} ms above it",
            gate.max_p99_ratio, gate.p99_tolerance_ms
        ));
    }
    Verdict::Pass(reading)
}

fn ms(v: Option<f64>) -> String {
    v.map_or("n/a".to_owned(), |v| format!("{v:.1} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `requests` answers, `errors` of them 5xx, all within `le_ms` milliseconds.
    fn window(requests: u64, errors: u64, le_ms: f64) -> Counts {
        Counts {
            requests,
            errors,
            buckets: vec![
                (le_ms / 2000.0, 0),
                (le_ms / 1000.0, requests),
                (f64::INFINITY, requests),
            ],
        }
    }

    #[test]
    fn a_cell_failing_a_share_of_requests_fails_against_a_clean_baseline() {
        let gate = HealthGate::default();
        let verdict = judge(&gate, &window(200, 60, 10.0), Some(&window(400, 0, 10.0)));
        assert!(
            matches!(&verdict, Verdict::Fail(r) if r.contains("errors 30.0%")),
            "{verdict:?}"
        );
    }

    #[test]
    fn errors_the_baseline_shares_are_not_held_against_the_wave() {
        let gate = HealthGate::default();
        let verdict = judge(&gate, &window(200, 10, 10.0), Some(&window(400, 18, 10.0)));
        assert!(matches!(verdict, Verdict::Pass(_)), "{verdict:?}");
        // Without a baseline (the last wave), the same 5 % fails.
        let verdict = judge(&gate, &window(200, 10, 10.0), None);
        assert!(matches!(verdict, Verdict::Fail(_)), "{verdict:?}");
    }

    #[test]
    fn latency_fails_only_past_both_the_ratio_and_the_tolerance() {
        let gate = HealthGate::default(); // 2x and 25 ms
        let base = window(400, 0, 2.0);
        // 3x but only 4 ms more: a wobble.
        assert!(matches!(
            judge(&gate, &window(200, 0, 6.0), Some(&base)),
            Verdict::Pass(_)
        ));
        // 40x and 78 ms more.
        let verdict = judge(&gate, &window(200, 0, 80.0), Some(&base));
        assert!(
            matches!(&verdict, Verdict::Fail(r) if r.contains("p99")),
            "{verdict:?}"
        );
    }

    #[test]
    fn too_little_traffic_is_inconclusive_unless_none_is_required() {
        let mut gate = HealthGate::default();
        let quiet = window(5, 5, 10.0);
        assert!(matches!(
            judge(&gate, &quiet, None),
            Verdict::Inconclusive(_)
        ));
        gate.min_requests = 0;
        assert!(matches!(
            judge(&gate, &Counts::default(), None),
            Verdict::Pass(_)
        ));
    }
}
