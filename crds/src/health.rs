//! The health figures a cell's lanes publish on their admin listener's `/metrics`, and how a
//! reader turns two scrapes into an error rate and a p99 over the time between them.
//!
//! The cell runtime registers its metrics under these names; the operator's rollout gate reads
//! them back. One module owns both sides of that contract.

use std::collections::BTreeMap;

use thiserror::Error;

/// Prefix of every metric of the cell runtime.
pub const METRIC_PREFIX: &str = "cellstack_cell";
/// Counter of tenant API answers, labelled `route` and `code` (registered as
/// `<prefix>_requests`; the exposition adds `_total`).
pub const REQUESTS: &str = "requests";
/// Histogram of tenant API latency in seconds, labelled `priority`.
pub const REQUEST_DURATION: &str = "request_duration_seconds";

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Cumulative counts of one lane's (or several lanes') tenant API answers since they started.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Counts {
    /// Answers of any status.
    pub requests: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    /// Latency histogram: `(upper bound in seconds, answers at or under it)`, ascending, the
    /// last bound `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

/// A `/metrics` page that does not hold what a health reading needs.
#[derive(Debug, Error, PartialEq)]
pub enum ParseError {
    #[error("line {line}: {reason}: {text:?}")]
    Malformed {
        line: usize,
        reason: &'static str,
        text: String,
    },
    #[error(
        "the page has no {METRIC_PREFIX}_{REQUEST_DURATION}_bucket series: is this a cellstack cell's /metrics?"
    )]
    NoHistogram,
}

impl Counts {
    /// Reads the request counter and latency histogram from a Prometheus or OpenMetrics text
    /// page, summed over their labels.
    pub fn parse(page: &str) -> Result<Self, ParseError> {
        let requests_name = format!("{METRIC_PREFIX}_{REQUESTS}_total");
        let bucket_name = format!("{METRIC_PREFIX}_{REQUEST_DURATION}_bucket");
        let mut counts = Counts::default();
        let mut buckets: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
        for (i, raw) in page.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = |reason| ParseError::Malformed {
                line: i + 1,
                reason,
                text: raw.to_owned(),
            };
            let (name, rest) = match line.find(['{', ' ']) {
                Some(at) => line.split_at(at),
                None => return Err(malformed("no value")),
            };
            if name != requests_name && name != bucket_name {
                continue;
            }
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let end = closing_brace(r).ok_or_else(|| malformed("unclosed label set"))?;
                    (
                        parse_labels(&r[..end]).ok_or_else(|| malformed("bad label"))?,
                        &r[end + 1..],
                    )
                }
                None => (Vec::new(), rest),
            };
            // An exemplar or timestamp may follow the value.
            let value = value
                .split_whitespace()
                .next()
                .ok_or_else(|| malformed("no value"))?;
            let value: f64 = value
                .parse()
                .map_err(|_| malformed("value is not a number"))?;
            if !(value.is_finite() && value >= 0.0) {
                return Err(malformed("value is not a count"));
            }
            let value = value as u64;
            let label = |key: &str| {
                labels
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str())
            };
            if name == requests_name {
                counts.requests += value;
                if label("code").is_some_and(|c| c.starts_with('5')) {
                    counts.errors += value;
                }
            } else {
                let le = match label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => le
                        .parse()
                        .map_err(|_| malformed("bucket bound is not a number"))?,
                    None => return Err(malformed("bucket without le")),
                };
                let entry = buckets.entry(le.to_bits()).or_insert((le, 0));
                entry.1 += value;
            }
        }
        if buckets.is_empty() {
            // A lane that has answered nothing yet has no labelled series at all.
            if counts.requests == 0 {
                return Ok(counts);
            }
            return Err(ParseError::NoHistogram);
        }
        let mut sorted: Vec<(f64, u64)> = buckets.into_values().collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        counts.buckets = sorted;
        Ok(counts)
    }

    /// What happened between `earlier` and `self`, two scrapes of the same lane. A counter that
    /// went down means the process restarted in between: then everything it counted is new.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let restarted = self.requests < earlier.requests
            || self.errors < earlier.errors
            || self
                .buckets
                .iter()
                .any(|(le, n)| earlier.bucket(*le).is_some_and(|before| *n < before));
        if restarted {
            return self.clone();
        }
        Counts {
            requests: self.requests - earlier.requests,
            errors: self.errors - earlier.errors,
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| (*le, n - earlier.bucket(*le).unwrap_or(0)))
                .collect(),
        }
    }

    /// `self` plus `other` (two lanes, or several cells).
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (le, n) in &other.buckets {
            match self
                .buckets
                .iter_mut()
                .find(|(b, _)| b.to_bits() == le.to_bits())
            {
                Some((_, total)) => *total += n,
                None => self.buckets.push((*le, *n)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    fn bucket(&self, le: f64) -> Option<u64> {
        self.buckets
            .iter()
            .find(|(b, _)| b.to_bits() == le.to_bits())
            .map(|(_, n)| *n)
    }

    /// Share of answers that were 5xx; 0 without answers.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The `q` quantile of latency in seconds, interpolated within its bucket the way
    /// Prometheus' `histogram_quantile` does; `None` without answers. A quantile in the `+Inf`
    /// bucket is reported as the largest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last().map(|(_, n)| *n)?;
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut lower = (0.0, 0u64);
        for &(le, n) in &self.buckets {
            if n as f64 >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = (n - lower.1) as f64;
                if in_bucket == 0.0 {
                    return Some(le);
                }
                return Some(lower.0 + (le - lower.0) * (rank - lower.1 as f64) / in_bucket);
            }
            lower = (le, n);
        }
        Some(lower.0)
    }
}

/// Index of the `}` that closes a label set, skipping quoted values.
fn closing_brace(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// `a="1",b="x\"y"` → pairs; `None` when malformed.
fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut end = None;
        let mut chars = after.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        out.push((key.trim().to_owned(), value));
        rest = after[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP cellstack_cell_requests Tenant API requests by route and status code.
# TYPE cellstack_cell_requests counter
cellstack_cell_requests_total{route="items",code="200"} 90
cellstack_cell_requests_total{route="items",code="503"} 6
cellstack_cell_requests_total{route="counters",code="500"} 4
cellstack_cell_requests_total{route="items",code="429"} 7
# TYPE cellstack_cell_request_duration_seconds histogram
cellstack_cell_request_duration_seconds_sum{priority="normal"} 1.5
cellstack_cell_request_duration_seconds_count{priority="normal"} 100
cellstack_cell_request_duration_seconds_bucket{le="0.001",priority="normal"} 50
cellstack_cell_request_duration_seconds_bucket{le="0.01",priority="normal"} 90
cellstack_cell_request_duration_seconds_bucket{le="0.1",priority="normal"} 100
cellstack_cell_request_duration_seconds_bucket{le="+Inf",priority="normal"} 100
cellstack_cell_request_duration_seconds_bucket{priority="high",le="0.001"} 7
cellstack_cell_request_duration_seconds_bucket{priority="high",le="0.01"} 7
cellstack_cell_request_duration_seconds_bucket{priority="high",le="0.1"} 7
cellstack_cell_request_duration_seconds_bucket{priority="high",le="+Inf"} 7
cellstack_cell_in_flight 3
# EOF
"#;

    #[test]
    fn a_page_is_summed_over_routes_codes_and_priorities() {
        let c = Counts::parse(PAGE).unwrap();
        assert_eq!(c.requests, 107);
        assert_eq!(c.errors, 10, "503 and 500 count, 200 and 429 do not");
        assert_eq!(
            c.buckets,
            vec![(0.001, 57), (0.01, 97), (0.1, 107), (f64::INFINITY, 107)]
        );
    }

    #[test]
    fn a_fresh_lane_with_no_answers_reads_as_zero_and_a_foreign_page_is_refused() {
        let fresh = "# TYPE cellstack_cell_in_flight gauge\ncellstack_cell_in_flight 0\n# EOF\n";
        assert_eq!(Counts::parse(fresh).unwrap(), Counts::default());
        let foreign = "cellstack_cell_requests_total{code=\"200\",route=\"items\"} 3\n";
        assert_eq!(Counts::parse(foreign), Err(ParseError::NoHistogram));
        let broken = "cellstack_cell_requests_total{code=\"200\" 3\n";
        assert!(matches!(
            Counts::parse(broken),
            Err(ParseError::Malformed { line: 1, .. })
        ));
        let negative = "cellstack_cell_requests_total{code=\"200\"} -3\n";
        assert!(Counts::parse(negative).is_err());
    }

    #[test]
    fn a_quoted_brace_or_comma_in_a_label_value_does_not_break_parsing() {
        let page = concat!(
            "cellstack_cell_requests_total{route=\"a},\\\"b\",code=\"500\"} 2\n",
            "cellstack_cell_request_duration_seconds_bucket{le=\"+Inf\",priority=\"x\"} 2\n",
        );
        let c = Counts::parse(page).unwrap();
        assert_eq!((c.requests, c.errors), (2, 2));
    }

    #[test]
    fn the_window_between_two_scrapes_and_a_restart_in_between() {
        let before = Counts::parse(PAGE).unwrap();
        let mut after = before.clone();
        after.requests += 10;
        after.errors += 1;
        for (_, n) in &mut after.buckets {
            *n += 10;
        }
        let window = after.since(&before);
        assert_eq!((window.requests, window.errors), (10, 1));
        assert!(window.buckets.iter().all(|(_, n)| *n == 10));

        let restarted = Counts {
            requests: 5,
            errors: 0,
            buckets: vec![(0.001, 5), (f64::INFINITY, 5)],
        };
        assert_eq!(restarted.since(&before), restarted);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_histogram_quantile() {
        let c = Counts {
            requests: 100,
            errors: 0,
            buckets: vec![(0.01, 50), (0.02, 100), (f64::INFINITY, 100)],
        };
        assert_eq!(c.quantile(0.5), Some(0.01));
        let p99 = c.quantile(0.99).unwrap();
        assert!((p99 - 0.0198).abs() < 1e-9, "{p99}");
        let slow = Counts {
            requests: 10,
            errors: 0,
            buckets: vec![(0.01, 1), (f64::INFINITY, 10)],
        };
        assert_eq!(
            slow.quantile(0.99),
            Some(0.01),
            "capped at the largest finite bound"
        );
        assert_eq!(Counts::default().quantile(0.99), None);
        assert_eq!(c.error_rate(), 0.0);
    }

    #[test]
    fn adding_windows_sums_matching_buckets() {
        let mut a = Counts {
            requests: 4,
            errors: 1,
            buckets: vec![(0.01, 4), (f64::INFINITY, 4)],
        };
        a.add(&Counts {
            requests: 6,
            errors: 2,
            buckets: vec![(0.01, 3), (f64::INFINITY, 6)],
        });
        assert_eq!((a.requests, a.errors), (10, 3));
        assert_eq!(a.buckets, vec![(0.01, 7), (f64::INFINITY, 10)]);
        assert!((a.error_rate() - 0.3).abs() < 1e-9);
    }
}
