//! The chart's Grafana dashboards (`charts/cellstack/dashboards/*.json`) as the tests read them:
//! the files, and the PromQL expressions their panels, annotations and variables hold.

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use serde_json::Value;

/// Where the dashboards live, relative to the repository root.
pub const DIR: &str = "charts/cellstack/dashboards";

/// Every `*.json` file of [`DIR`], by file name, with its content; an error when there is none.
pub fn files() -> anyhow::Result<BTreeMap<String, String>> {
    let dir = crate::repo_root().join(DIR);
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .context("a dashboard file name is not UTF-8")?
                .to_owned();
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            files.insert(name, text);
        }
    }
    ensure!(!files.is_empty(), "no dashboard in {}", dir.display());
    Ok(files)
}

/// Every PromQL expression of a dashboard: its targets' and annotations' `expr`, and its query
/// variables' `query` (`label_values(<expr>, label)` whole; a string, or Grafana's newer
/// `{"query": ...}` form). Read from the parsed JSON, so escaped quotes are plain quotes here.
pub fn exprs(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = vec![];
    walk(dashboard, &mut out);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten();
    for variable in variables.filter(|v| v["type"] == "query") {
        match &variable["query"] {
            Value::String(q) => out.push(q.clone()),
            Value::Object(q) => {
                out.extend(q.get("query").and_then(Value::as_str).map(str::to_owned))
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn expressions_come_from_targets_annotations_and_query_variables_only() {
        let d = json!({
            "panels": [{"targets": [{"expr": "rate(a_total[5m])"}], "title": "expr"}],
            "annotations": {"list": [{"expr": "b"}]},
            "templating": {"list": [
                {"type": "query", "query": "label_values(c, cell)"},
                {"type": "query", "query": {"query": "label_values(d, lane)", "refId": "x"}},
                {"type": "custom", "query": "e,f"}
            ]}
        });
        assert_eq!(
            super::exprs(&d),
            [
                "b",
                "rate(a_total[5m])",
                "label_values(c, cell)",
                "label_values(d, lane)"
            ]
        );
    }
}
