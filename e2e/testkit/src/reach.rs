//! Whether a TCP connection gets through, seen from this host (through the local cluster's test
//! path) or from a pod of a given namespace and labels (what a NetworkPolicy judges): the
//! isolation checks assert refusals with these, not only the paths that must work.

use std::{collections::BTreeMap, fmt, net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{DeleteParams, LogParams, PostParams},
    runtime::wait::await_condition,
};
use serde_json::json;
use tokio::{io::AsyncReadExt as _, time::timeout};

use crate::cluster::{CLUSTER_WAIT, image};

/// How long a connect may take before it counts as refused (a policy that drops instead of
/// rejecting looks like this).
const CONNECT: Duration = Duration::from_secs(3);
/// How long the test path has to reset a connection it could not open on (its own connect is
/// to a pod on the same node: a refusal takes milliseconds).
const RESET: Duration = Duration::from_millis(1500);

/// What a connection attempt met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Connected to a listener.
    Open,
    /// Refused, reset before any byte, or not connected within the connect timeout.
    Refused,
}

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reach::Open => "open",
            Reach::Refused => "refused",
        })
    }
}

/// From this host to a pod's `addr`, through the test path (docs/local-cluster.md): the relay in
/// the pod's node completes the handshake first and resets the connection when its own connect
/// fails, so a refusal shows as a reset (or EOF) before any byte instead of a refused connect.
/// A listener that says nothing first stays quiet: open.
pub async fn from_host(addr: SocketAddr) -> anyhow::Result<Reach> {
    let mut stream = match timeout(CONNECT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) | Err(_) => return Ok(Reach::Refused),
    };
    let mut byte = [0u8; 1];
    Ok(match timeout(RESET, stream.read(&mut byte)).await {
        Err(_) | Ok(Ok(1..)) => Reach::Open,
        Ok(Ok(0)) | Ok(Err(_)) => Reach::Refused,
    })
}

/// Where a probe pod runs and who it is to the policies.
pub struct ProbePod<'a> {
    pub namespace: &'a str,
    /// Its name in `namespace` (it is deleted afterwards).
    pub name: &'a str,
    pub labels: BTreeMap<String, String>,
    /// The node to run on (so a check crosses nodes); the scheduler's choice when `None`.
    pub node: Option<&'a str>,
}

/// What a probe pod met at one target: the last connect's outcome, and the seconds from the
/// first connect until it met what was expected (or until it gave up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probed {
    pub reach: Reach,
    pub after_secs: u64,
}

/// Runs a one-shot busybox pod that tries a TCP connect to each of `targets` (3 s connect
/// timeout each) and returns what each met, by target. The pod is deleted afterwards.
///
/// A policy engine applies the policies to a new pod (the probe) within a sync of its own, not
/// at once: the first connects of a pod that just started may meet no rule for it yet. So
/// each target is tried again, once a second, until it meets what `targets` expects of it or
/// `settle` has passed; the result says how long that took. A path that never behaves as
/// expected within `settle` reports what it met last.
pub async fn from_pod(
    client: &Client,
    probe: &ProbePod<'_>,
    targets: &[(SocketAddr, Reach)],
    settle: Duration,
) -> anyhow::Result<BTreeMap<SocketAddr, Probed>> {
    let busybox = image("CELLSTACK_E2E_BUSYBOX_IMAGE")?;
    // One line per target: "<ip>:<port> open|refused <seconds>".
    let script = targets
        .iter()
        .map(|(t, want)| {
            format!(
                "s=$(date +%s); while :; do \
                 if nc -w {connect} {ip} {port} </dev/null 2>/dev/null; then r=open; else r=refused; fi; \
                 n=$(( $(date +%s) - s )); \
                 if [ $r = {want} ] || [ $n -ge {settle} ]; then echo \"{t} $r $n\"; break; fi; \
                 sleep 1; done",
                connect = CONNECT.as_secs(),
                ip = t.ip(),
                port = t.port(),
                settle = settle.as_secs(),
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let targets: Vec<SocketAddr> = targets.iter().map(|(t, _)| *t).collect();
    let targets = targets.as_slice();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": probe.name, "labels": probe.labels},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "nodeName": probe.node,
            "securityContext": {
                "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "probe",
                "image": busybox,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))
    .context("building the probe pod")?;
    let api: Api<Pod> = Api::namespaced(client.clone(), probe.namespace);
    let what = format!("probe pod {}/{}", probe.namespace, probe.name);
    api.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating {what}"))?;
    let result = async {
        let done = |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
        };
        timeout(CLUSTER_WAIT, await_condition(api.clone(), probe.name, done))
            .await
            .map_err(|_| anyhow::anyhow!("{what} did not finish within {CLUSTER_WAIT:?}"))?
            .with_context(|| format!("watching {what}"))?;
        let log = api
            .logs(probe.name, &LogParams::default())
            .await
            .with_context(|| format!("reading the log of {what}"))?;
        parse(&log, targets).with_context(|| format!("{what}: its log:\n{log}"))
    }
    .await;
    if let Err(e) = api.delete(probe.name, &DeleteParams::background()).await {
        eprintln!("warning: deleting {what}: {e}");
    }
    result
}

fn parse(log: &str, targets: &[SocketAddr]) -> anyhow::Result<BTreeMap<SocketAddr, Probed>> {
    let mut seen = BTreeMap::new();
    for line in log.lines() {
        let mut words = line.split(' ');
        let (Some(target), Some(reach), Some(after)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let (Ok(target), Ok(after_secs)) = (target.parse::<SocketAddr>(), after.parse::<u64>())
        else {
            continue;
        };
        let reach = match reach {
            "open" => Reach::Open,
            "refused" => Reach::Refused,
            _ => continue,
        };
        seen.insert(target, Probed { reach, after_secs });
    }
    if let Some(missing) = targets.iter().find(|t| !seen.contains_key(t)) {
        bail!("no result for {missing}");
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_one_line_per_target_and_requires_all() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:6379".parse().unwrap();
        let got = parse(
            "10.0.0.1:80 open 0\nnoise\n10.0.0.2:6379 refused 4\n",
            &[a, b],
        )
        .unwrap();
        assert_eq!(
            got[&a],
            Probed {
                reach: Reach::Open,
                after_secs: 0
            }
        );
        assert_eq!(
            got[&b],
            Probed {
                reach: Reach::Refused,
                after_secs: 4
            }
        );
        assert!(parse("10.0.0.1:80 open 0\n", &[a, b]).is_err());
    }
}
