//! MemberClusters against the API server in `KUBECONFIG`, with a real `cellstack-operator`: a
//! kubeconfig pointing back at this same API server (a ServiceAccount's token from the
//! TokenRequest API, the cluster's CA inline) makes the member Reachable with the server's
//! version; one pointing where nothing listens makes it Unreachable within the probe timeouts;
//! an `exec` kubeconfig is refused without running the command or contacting its server; a
//! missing Secret is reported; and rotating a Secret to a good kubeconfig makes its member
//! Reachable.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use base64::Engine as _;
use cellstack_api::v1alpha1::{MemberCluster, member_condition};
use common::{
    World,
    members::{condition, create_member, put_secret, wait_member, wait_warning},
};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Secret, ServiceAccount},
};
use kube::{Api, api::PostParams, config::Kubeconfig};
use serde_json::{Value, json};

/// A probe takes at most 5 s and a member is reconciled every 10 s: a member's condition is
/// expected well within this.
const WITHIN_PROBES: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_clusters_report_credentials_and_reachability_and_follow_a_rotated_secret()
-> anyhow::Result<()> {
    let mut world = World::new("op-members").await?;
    let marker = std::env::temp_dir().join(format!("{}-exec-ran", world.id));
    let result = scenario(&mut world, &marker).await;
    let _ = std::fs::remove_file(&marker);
    // MemberClusters carry the world's label (deleted by `finish`); the ServiceAccount and the
    // Secrets go with the world's namespace.
    world.finish(result).await
}

async fn scenario(world: &mut World, marker: &std::path::Path) -> anyhow::Result<()> {
    let op = world.start_operator("mc0").await?;
    let members: Api<MemberCluster> = Api::all(world.client.clone());
    let secrets: Api<Secret> = world.system.api();
    let (server, ca) = this_api_server()?;
    let token = mint_token(world).await?;
    let expected_version = world.client.apiserver_version().await?.git_version;

    // Where nothing listens: a port just found free.
    let nowhere = format!(
        "https://127.0.0.1:{}",
        cellstack_testkit::ports::free_port()
    );
    // The exec kubeconfig's server: a listener that counts who connects.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let trap = format!("https://{}", listener.local_addr()?);
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = {
        let connections = connections.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                connections.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    let good = cellstack_testkit::unique_name("mc-good");
    let down = cellstack_testkit::unique_name("mc-down");
    let exec = cellstack_testkit::unique_name("mc-exec");
    let missing = cellstack_testkit::unique_name("mc-missing");
    let user = json!({ "token": token });
    put_secret(&secrets, &good, &kubeconfig(&server, &ca, user.clone())?).await?;
    put_secret(&secrets, &down, &kubeconfig(&nowhere, &ca, user.clone())?).await?;
    let exec_user = json!({ "exec": {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "sh",
        "args": ["-c", format!("touch {}; exit 1", marker.display())],
        "interactiveMode": "Never",
    }});
    put_secret(&secrets, &exec, &kubeconfig(&trap, &ca, exec_user)?).await?;
    for name in [&good, &down, &exec, &missing] {
        create_member(&members, world, name, json!({})).await?;
    }

    // (a) This same API server, through a ServiceAccount's token: Reachable, with its version.
    let status = wait_member(&members, &good, "Reachable=True", WITHIN_PROBES, |m| {
        condition(m, member_condition::REACHABLE) == Some(("True", "Contacted"))
    })
    .await?;
    anyhow::ensure!(
        condition(&status, member_condition::CREDENTIALS_VALID) == Some(("True", "Parsed")),
        "credentials of {good}: {:?}",
        status.status
    );
    let s = status.status.as_ref().context("status")?;
    anyhow::ensure!(
        s.kubernetes_version.as_deref() == Some(expected_version.as_str()),
        "version {:?}, the server says {expected_version}",
        s.kubernetes_version
    );
    anyhow::ensure!(s.last_contact.is_some(), "no lastContact: {s:?}");
    anyhow::ensure!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == status.metadata.generation),
        "conditions without the generation: {s:?}"
    );

    // (b) Nothing listens: Unreachable within the probe timeouts, credentials still valid.
    let status = wait_member(&members, &down, "Reachable=False", WITHIN_PROBES, |m| {
        condition(m, member_condition::REACHABLE) == Some(("False", "Unreachable"))
    })
    .await?;
    anyhow::ensure!(
        condition(&status, member_condition::CREDENTIALS_VALID) == Some(("True", "Parsed")),
        "credentials of {down}: {:?}",
        status.status
    );

    // (c) exec: refused, naming the field, without running it or contacting the server.
    let status = wait_member(
        &members,
        &exec,
        "CredentialsValid=False",
        WITHIN_PROBES,
        |m| {
            condition(m, member_condition::CREDENTIALS_VALID)
                == Some(("False", "UnsupportedKubeconfig"))
        },
    )
    .await?;
    let message = condition_message(&status, member_condition::CREDENTIALS_VALID);
    anyhow::ensure!(
        message.contains("user.exec"),
        "the message does not name the field: {message}"
    );
    anyhow::ensure!(
        condition(&status, member_condition::REACHABLE) == Some(("False", "NotContacted")),
        "reachable of {exec}: {:?}",
        status.status
    );
    anyhow::ensure!(
        status
            .status
            .as_ref()
            .is_some_and(|s| s.kubernetes_version.is_none() && s.last_contact.is_none()),
        "an exec member has a version or contact: {:?}",
        status.status
    );
    // One Warning Event on the transition, through the operator's recorder.
    wait_warning(&world.client, &exec, "UnsupportedKubeconfig", None).await?;

    // A Secret that does not exist.
    wait_member(
        &members,
        &missing,
        "CredentialsValid=False",
        WITHIN_PROBES,
        |m| condition(m, member_condition::CREDENTIALS_VALID) == Some(("False", "SecretNotFound")),
    )
    .await?;

    // The gauge per member.
    let gauge = |name: &str| {
        format!("cellstack_operator_member_cluster_reachable{{member_cluster=\"{name}\"}}")
    };
    let operator = &world.operators[op];
    anyhow::ensure!(
        operator.metric(&gauge(&good)).await? == Some(1.0),
        "gauge of {good}"
    );
    anyhow::ensure!(
        operator.metric(&gauge(&down)).await? == Some(0.0),
        "gauge of {down}"
    );

    // (d) The unreachable member's Secret rotated to a good kubeconfig: Reachable.
    put_secret(&secrets, &down, &kubeconfig(&server, &ca, user)?).await?;
    wait_member(
        &members,
        &down,
        "Reachable=True after rotation",
        WITHIN_PROBES,
        |m| condition(m, member_condition::REACHABLE) == Some(("True", "Contacted")),
    )
    .await?;

    // After all that, the exec command never ran and its server was never contacted.
    anyhow::ensure!(
        !marker.exists(),
        "the exec kubeconfig's command ran in the operator"
    );
    anyhow::ensure!(
        connections.load(Ordering::SeqCst) == 0,
        "the exec kubeconfig's server was contacted"
    );
    counter.abort();
    Ok(())
}

/// The server and inline CA (base64 PEM) of the current context of `KUBECONFIG`.
fn this_api_server() -> anyhow::Result<(String, String)> {
    let kubeconfig = Kubeconfig::read().context("reading KUBECONFIG")?;
    let context = kubeconfig
        .current_context
        .as_deref()
        .context("KUBECONFIG has no current context")?;
    let cluster_name = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .context("the current context names no cluster")?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .context("the current context's cluster is missing")?;
    let server = cluster
        .server
        .clone()
        .context("the cluster has no server")?;
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => data.clone(),
        (None, Some(path)) => base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(path).with_context(|| format!("reading {path}"))?),
        (None, None) => anyhow::bail!("the cluster in KUBECONFIG has no CA"),
    };
    Ok((server, ca))
}

/// A token of a fresh ServiceAccount (no role: `GET /version` needs none) in the world's
/// namespace, from the TokenRequest API.
async fn mint_token(world: &World) -> anyhow::Result<String> {
    let accounts: Api<ServiceAccount> = world.system.api();
    let account: ServiceAccount = serde_json::from_value(json!({
        "metadata": { "name": "member-probe" },
    }))?;
    accounts
        .create(&PostParams::default(), &account)
        .await
        .context("creating ServiceAccount member-probe")?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let minted = accounts
        .create_token_request("member-probe", &PostParams::default(), &request)
        .await
        .context("minting a token for member-probe")?;
    Ok(minted.status.context("TokenRequest without status")?.token)
}

/// A self-contained kubeconfig for `server` with `user`.
fn kubeconfig(server: &str, ca: &str, user: Value) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(&json!({
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "member",
        "clusters": [{ "name": "member", "cluster": {
            "server": server,
            "certificate-authority-data": ca,
        }}],
        "users": [{ "name": "member", "user": user }],
        "contexts": [{ "name": "member", "context": { "cluster": "member", "user": "member" } }],
    }))?)
}

fn condition_message(member: &MemberCluster, type_: &str) -> String {
    member
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}
