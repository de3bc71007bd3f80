//! The chart's alert and recording rules (`charts/cellstack/templates/_alerts.tpl`, runbooks in
//! docs/alerts.md), checked by Prometheus' own tool: rendered with the chart's default values,
//! `promtool check rules` accepts them and `promtool test rules` passes the cases in
//! `e2e/alerts/cellstack.rules.test.yaml`, where every alert has a case that fires and one where
//! it must not. The PrometheusRule carries the same rules as the plain file, and
//! `monitoring.alerts.for` is the one way to shorten the alerts' `for:`.
//!
//! The PrometheusRule, ServiceMonitor and PodMonitor are validated by a real API server against
//! prometheus-operator's own CRDs (`e2e/scripts/fetch-prometheus-operator-crds.sh` takes them from
//! the module on the Go module proxy).
//!
//! Needs Helm (as `tests/chart.rs`), `promtool` (built with Prometheus through the Go module proxy
//! by `e2e/scripts/build-prometheus.sh`) and, for the last test, an API server in `KUBECONFIG`;
//! when one is missing the test fails saying so.

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, ensure};
use cellstack_testkit::{
    client, cluster::TestNamespace, helm, kubectl, promtool as promtool_binary, repo_root,
    unique_name,
};
use serde_json::Value;

/// The promtool cases, relative to the repository root; they name the rules file
/// `cellstack.rules.yaml` next to them.
const CASES: &str = "e2e/alerts/cellstack.rules.test.yaml";

/// Every document `helm template` prints for the chart with `--set` `values`.
fn render(values: &[&str]) -> anyhow::Result<Vec<Value>> {
    render_into("cellstack", values)
}

/// The same, for a release in `namespace`.
fn render_into(namespace: &str, values: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut cmd = Command::new(helm()?);
    cmd.current_dir(repo_root()).args([
        "template",
        "cellstack",
        "charts/cellstack",
        "--namespace",
        namespace,
    ]);
    for value in values {
        cmd.args(["--set", value]);
    }
    let out = cmd.output().context("running helm template")?;
    ensure!(
        out.status.success(),
        "helm template {values:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).context("helm printed non-UTF-8")?;
    let mut docs = vec![];
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(doc).context("a rendered document")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The plain rules file the chart renders into its ConfigMap.
fn rules_file(docs: &[Value]) -> anyhow::Result<String> {
    docs.iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-prometheus-rules"))
        })
        .and_then(|d| d["data"]["cellstack.rules.yaml"].as_str())
        .map(str::to_owned)
        .context("no ConfigMap *-prometheus-rules with key cellstack.rules.yaml was rendered")
}

/// `promtool` (the pinned build, the same as the test command's Prometheus) in `dir`.
fn promtool(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(promtool_binary()?)
        .current_dir(dir)
        .args(args)
        .output()
        .context("running promtool")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}

/// A scratch directory holding the rendered rules and the cases.
fn scratch_with(rules: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(unique_name("cellstack-alerts"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cellstack.rules.yaml"), rules)?;
    std::fs::copy(
        repo_root().join(CASES),
        dir.join("cellstack.rules.test.yaml"),
    )
    .with_context(|| format!("copying {CASES}"))?;
    Ok(dir)
}

fn alert_names(groups: &Value) -> BTreeSet<String> {
    groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn promtool_accepts_the_rules_and_passes_a_firing_and_a_quiet_case_of_every_alert()
-> anyhow::Result<()> {
    let rules = rules_file(&render(&[])?)?;
    let dir = scratch_with(&rules)?;
    let checked = promtool(&dir, &["check", "rules", "cellstack.rules.yaml"])?;
    ensure!(
        checked.contains("SUCCESS"),
        "promtool check rules: {checked}"
    );
    let tested = promtool(&dir, &["test", "rules", "cellstack.rules.test.yaml"])?;
    ensure!(tested.contains("SUCCESS"), "promtool test rules: {tested}");
    std::fs::remove_dir_all(&dir).ok();

    let alerts = alert_names(&serde_yaml::from_str(&rules)?);
    ensure!(
        alerts.len() >= 10,
        "only {} alerts: {alerts:?}",
        alerts.len()
    );
    let cases: Value = serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(CASES))?)?;
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for test in cases["tests"].as_array().into_iter().flatten() {
        for case in test["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().unwrap_or_default().to_owned();
            let expected = case["exp_alerts"].as_array().map_or(0, Vec::len);
            if expected > 0 {
                &mut firing
            } else {
                &mut quiet
            }
            .insert(name);
        }
    }
    let unfired: Vec<_> = alerts.difference(&firing).collect();
    let unquiet: Vec<_> = alerts.difference(&quiet).collect();
    ensure!(
        unfired.is_empty() && unquiet.is_empty(),
        "{CASES}: alerts without a case that fires: {unfired:?}; without one where they must not: {unquiet:?}"
    );
    let unknown: Vec<_> = firing
        .union(&quiet)
        .filter(|a| !alerts.contains(*a))
        .collect();
    ensure!(
        unknown.is_empty(),
        "{CASES} tests alerts the chart does not have: {unknown:?}"
    );
    // Every alert links to its runbook, and the runbook exists.
    let runbooks = std::fs::read_to_string(repo_root().join("docs/alerts.md"))?;
    for alert in &alerts {
        ensure!(
            runbooks.contains(&format!("## {alert}")),
            "docs/alerts.md has no section `## {alert}`"
        );
    }
    Ok(())
}

#[test]
fn the_prometheus_rule_carries_the_rules_of_the_plain_file() -> anyhow::Result<()> {
    let docs = render(&["monitoring.prometheusRule.enabled=true"])?;
    let plain: Value = serde_yaml::from_str(&rules_file(&docs)?)?;
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .context("no PrometheusRule rendered with monitoring.prometheusRule.enabled=true")?;
    ensure!(
        rule["apiVersion"] == "monitoring.coreos.com/v1",
        "PrometheusRule apiVersion {}",
        rule["apiVersion"]
    );
    ensure!(
        rule["spec"]["groups"] == plain["groups"],
        "the PrometheusRule's groups differ from the plain rules file's"
    );
    // Off by default: prometheus-operator's CRDs may not exist.
    let defaults = render(&[])?;
    ensure!(
        !defaults.iter().any(|d| d["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("monitoring.coreos.com"))),
        "the default values render a prometheus-operator object"
    );
    Ok(())
}

#[test]
fn monitoring_alerts_for_replaces_every_alerts_own_for() -> anyhow::Result<()> {
    let fors = |values: &[&str]| -> anyhow::Result<Vec<(String, String)>> {
        let rules: Value = serde_yaml::from_str(&rules_file(&render(values)?)?)?;
        Ok(rules["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .filter_map(|r| {
                Some((
                    r["alert"].as_str()?.to_owned(),
                    r["for"].as_str()?.to_owned(),
                ))
            })
            .collect())
    };
    let own = fors(&[])?;
    ensure!(
        own.iter().all(|(_, f)| f.ends_with('m')),
        "every default for: is in minutes: {own:?}"
    );
    let short = fors(&["monitoring.alerts.for=10s"])?;
    ensure!(
        short.len() == own.len() && short.iter().all(|(_, f)| f == "10s"),
        "with monitoring.alerts.for=10s: {short:?}"
    );
    Ok(())
}

/// `kubectl` with `args`, `stdin` piped in; its output, or an error with it.
fn kubectl_with(args: &[&str], stdin: &str) -> anyhow::Result<String> {
    let mut child = kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl (set KUBECTL to the pinned build)")?;
    child
        .stdin
        .take()
        .context("kubectl's stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "kubectl {args:?} failed:\n{text}");
    Ok(text)
}

#[tokio::test]
async fn prometheus_operator_accepts_the_rendered_prometheus_rule_and_monitors()
-> anyhow::Result<()> {
    let script = repo_root().join("e2e/scripts/fetch-prometheus-operator-crds.sh");
    let out = Command::new(&script)
        .arg("--print-path")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let crds = String::from_utf8(out.stdout)?.trim().to_owned();
    // Cluster-wide and harmless to leave: prometheus-operator's own definitions.
    kubectl_with(
        &["apply", "--server-side", "--force-conflicts", "-f", &crds],
        "",
    )?;
    kubectl_with(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/prometheusrules.monitoring.coreos.com",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/podmonitors.monitoring.coreos.com",
        ],
        "",
    )?;

    let client = client().await?;
    let ns = TestNamespace::create(&client, "alerts").await?;
    let result = async {
        let docs = render_into(
            &ns.name,
            &[
                "monitoring.prometheusRule.enabled=true",
                "monitoring.serviceMonitor.enabled=true",
                "monitoring.serviceMonitor.interval=15s",
            ],
        )?;
        let monitoring: Vec<&Value> = docs
            .iter()
            .filter(|d| {
                d["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
            })
            .collect();
        let kinds: BTreeSet<&str> = monitoring
            .iter()
            .filter_map(|d| d["kind"].as_str())
            .collect();
        ensure!(
            kinds == BTreeSet::from(["PodMonitor", "PrometheusRule", "ServiceMonitor"]),
            "rendered monitoring kinds: {kinds:?}"
        );
        let mut stream = String::new();
        for doc in &monitoring {
            stream.push_str("---\n");
            stream.push_str(&serde_yaml::to_string(doc)?);
        }
        // The API server validates each object against prometheus-operator's schema (unknown
        // fields refused) and stores nothing.
        let applied = kubectl_with(
            &[
                "apply",
                "--server-side",
                "--field-manager=cellstack-alerts-test",
                "--dry-run=server",
                "--validate=strict",
                "-f",
                "-",
            ],
            &stream,
        )?;
        ensure!(
            applied
                .matches("serverside-applied (server dry run)")
                .count()
                == 3,
            "kubectl said: {applied}"
        );
        Ok(())
    }
    .await;
    ns.finish(result).await
}
