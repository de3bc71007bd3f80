//! The `/metrics` page every binary serves, and the names a page or a document carries, so that
//! each binary's tests can hold its docs and its registry to the same list.

use std::{collections::BTreeSet, io, path::Path};

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use prometheus_client::{encoding::text::encode, registry::Registry};

/// The content type of prometheus-client's text encoding (OpenMetrics 1.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `registry` encoded as a `/metrics` answer: 200 with the OpenMetrics text, or 500 naming the
/// encoding error.
pub fn response(registry: &Registry) -> Response {
    let mut text = String::new();
    match encode(&mut text, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
            .into_response(),
    }
}

/// The metric families a `/metrics` page declares (`# TYPE` lines) whose names start with
/// `prefix`, as a reader would name them: a counter `x` as `x_total` (the name of its sample),
/// every other type by its family name. A family that has no sample yet (a labelled family
/// before its first label set) is listed too: it is registered.
pub fn families(exposition: &str, prefix: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(name, kind)| match kind.trim() {
            "counter" if !name.ends_with("_total") => format!("{name}_total"),
            _ => name.to_owned(),
        })
        .collect()
}

/// The metric names a document mentions: every whole word that starts with `prefix` and is made
/// of lowercase letters, digits and underscores (`cellstack_cell_shed_total{priority}` names
/// `cellstack_cell_shed_total`). Docs name each metric in full, never by a shortened suffix.
pub fn named_in(doc: &str, prefix: &str) -> BTreeSet<String> {
    let word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = doc;
    while let Some(at) = rest.find(prefix) {
        let preceded_by_word = rest[..at].chars().next_back().is_some_and(word);
        let tail = &rest[at..];
        let len = tail.find(|c: char| !word(c)).unwrap_or(tail.len());
        if !preceded_by_word && len > prefix.len() {
            names.insert(tail[..len].trim_end_matches('_').to_owned());
        }
        rest = &tail[len.max(1)..];
    }
    names
}

/// What a document and a `/metrics` page disagree on: names the doc mentions that the page does
/// not declare, and families the page declares that the doc never mentions. Empty when they
/// agree.
pub fn disagreements(doc: &str, exposition: &str, prefix: &str) -> Vec<String> {
    let documented = named_in(doc, prefix);
    let served = families(exposition, prefix);
    let mut out: Vec<String> = documented
        .difference(&served)
        .map(|n| format!("documented but not served: {n}"))
        .collect();
    out.extend(
        served
            .difference(&documented)
            .map(|n| format!("served but not documented: {n}")),
    );
    out
}

/// The documents of the workspace at `root` that name metrics: `README.md`, every page of
/// `docs/` and the chart's README, joined.
pub fn documentation(root: &Path) -> io::Result<String> {
    let mut pages = vec![
        root.join("README.md"),
        root.join("charts/cellstack/README.md"),
    ];
    for entry in std::fs::read_dir(root.join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    let mut text = String::new();
    for page in pages {
        let body = std::fs::read_to_string(&page)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", page.display())))?;
        text.push_str(&body);
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP app_requests Requests.\n# TYPE app_requests counter\n\
                        app_requests_total{code=\"200\"} 3\n# HELP app_latency_seconds L.\n\
                        # TYPE app_latency_seconds histogram\napp_latency_seconds_count 1\n\
                        # HELP app_leader Leader.\n# TYPE app_leader gauge\n\
                        # HELP other_x X.\n# TYPE other_x gauge\nother_x 1\n# EOF\n";

    #[test]
    fn families_name_counters_by_their_sample_and_keep_families_without_samples() {
        let got: Vec<String> = families(PAGE, "app_").into_iter().collect();
        assert_eq!(
            got,
            ["app_latency_seconds", "app_leader", "app_requests_total"]
        );
    }

    #[test]
    fn a_document_names_whole_words_with_the_prefix_and_drops_labels() {
        let doc = "`app_requests_total{code}`, `app_latency_seconds` (histogram); \
                   not myapp_x, and `app_` alone is no name.";
        let got: Vec<String> = named_in(doc, "app_").into_iter().collect();
        assert_eq!(got, ["app_latency_seconds", "app_requests_total"]);
    }

    #[test]
    fn disagreements_list_both_directions() {
        let doc = "app_requests_total, app_latency_seconds, app_gone_total";
        assert_eq!(
            disagreements(doc, PAGE, "app_"),
            [
                "documented but not served: app_gone_total",
                "served but not documented: app_leader"
            ]
        );
        assert!(
            disagreements(
                "app_requests_total app_latency_seconds app_leader",
                PAGE,
                "app_"
            )
            .is_empty()
        );
    }
}
