//! Startup against an API server of the test's own: the operator refuses to run without its
//! CRDs, naming the command that installs them, and exits instead of hanging.

use std::time::Duration;

use cellstack_testkit::control_plane::ControlPlane;

#[tokio::test]
async fn without_its_crds_the_operator_exits_at_once_with_the_install_command() {
    let dir = std::env::temp_dir().join(cellstack_testkit::unique_name("op-nocrds"));
    let cp = ControlPlane::up(&dir).expect("a control plane of this test's own");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_cellstack-operator"))
        .env("KUBECONFIG", cp.kubeconfig())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .args(["--metrics-listen", "127.0.0.1:0"])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the operator exits instead of waiting")
        .expect("the operator runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must fail: {stderr}");
    assert!(
        stderr.contains("cells.cellstack.dev is not installed")
            && stderr.contains("kubectl apply --server-side -f crds/"),
        "the error names the missing CRD and the install command: {stderr}"
    );
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}
