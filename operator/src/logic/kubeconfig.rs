//! Which kubeconfigs the operator accepts for a member cluster: only self-contained ones, whose
//! credentials and CA are inline. Anything that would make the operator read a file, run a
//! command, ask an auth provider, go through a proxy or skip TLS verification *in its own pod* is
//! refused before a client is built, so nothing is contacted with it (docs/member-clusters.md).
//!
//! Why: the Secret comes from whoever may write Secrets in the operator's namespace, and a
//! kubeconfig naming `tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token` with a
//! hostile `server` would send the operator's own token away; an `exec` entry would run a
//! command in the operator's container.

use kube::config::Kubeconfig;

/// A kubeconfig the operator refuses: `field` says where (`users[east].user.exec`), `why` what
/// to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is not accepted: {why}")]
pub struct Unsupported {
    pub field: String,
    pub why: &'static str,
}

const FILES: &str = "the operator would read a file in its own pod; put the content inline";
const INLINE_CA: &str = "the operator would read a file in its own pod; put the CA inline as certificate-authority-data (base64 PEM)";
const INLINE_CERT: &str = "the operator would read a file in its own pod; use client-certificate-data and client-key-data (base64 PEM)";
const TOKEN_FILE: &str = "the operator would read a file in its own pod (and could send its own service-account token away); put the token inline as token";
const EXEC: &str = "the operator would run a command in its own pod; mint a token (e.g. kubectl create token) or a client certificate and put it inline";
const AUTH_PROVIDER: &str = "auth providers call out of the operator's pod and refresh through it; use an inline token or client certificate";
const INSECURE: &str =
    "the operator would not verify the member's API server; set certificate-authority-data instead";
const PROXY: &str = "the operator reaches member clusters directly; remove proxy-url";
const PLAIN_HTTP: &str = "the operator would send the member's credentials unencrypted; use the API server's https:// address";

/// Checks every cluster and user of `kubeconfig` (not only the current context's: a kubeconfig
/// is accepted or refused as a whole, so a later context switch cannot slip a refused entry in).
pub fn check(kubeconfig: &Kubeconfig) -> Result<(), Unsupported> {
    let refuse = |field: String, why| Err(Unsupported { field, why });
    for named in &kubeconfig.clusters {
        let Some(cluster) = &named.cluster else {
            continue;
        };
        let at = |field: &str| format!("clusters[{}].cluster.{field}", named.name);
        if cluster.certificate_authority.is_some() {
            return refuse(at("certificate-authority"), INLINE_CA);
        }
        if cluster.insecure_skip_tls_verify == Some(true) {
            return refuse(at("insecure-skip-tls-verify"), INSECURE);
        }
        if cluster.proxy_url.is_some() {
            return refuse(at("proxy-url"), PROXY);
        }
        if cluster
            .server
            .as_deref()
            .is_some_and(|server| !server.to_ascii_lowercase().starts_with("https://"))
        {
            return refuse(at("server"), PLAIN_HTTP);
        }
    }
    for named in &kubeconfig.auth_infos {
        let Some(user) = &named.auth_info else {
            continue;
        };
        let at = |field: &str| format!("users[{}].user.{field}", named.name);
        if user.exec.is_some() {
            return refuse(at("exec"), EXEC);
        }
        if user.auth_provider.is_some() {
            return refuse(at("auth-provider"), AUTH_PROVIDER);
        }
        if user.token_file.is_some() {
            return refuse(at("tokenFile"), TOKEN_FILE);
        }
        if user.client_certificate.is_some() {
            return refuse(at("client-certificate"), INLINE_CERT);
        }
        if user.client_key.is_some() {
            return refuse(at("client-key"), INLINE_CERT);
        }
        // Unknown keys kube-rs keeps aside: a file path under a name it does not model is
        // still a file path.
        if let Some(key) = user
            .other
            .keys()
            .find(|k| k.ends_with("-file") || k.ends_with("File"))
        {
            return refuse(at(key), FILES);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==";

    /// A self-contained kubeconfig for `server` with `cluster` and `user` lines added.
    fn kubeconfig(cluster: &str, user: &str) -> Kubeconfig {
        let text = format!(
            "apiVersion: v1
kind: Config
current-context: east
clusters:
- name: east
  cluster:
    server: https://east.example:6443
    certificate-authority-data: {CA}
{cluster}
contexts:
- name: east
  context: {{cluster: east, user: operator}}
users:
- name: operator
  user:
{user}
"
        );
        Kubeconfig::from_yaml(&text).expect("test kubeconfig parses")
    }

    fn refused(cluster: &str, user: &str) -> Unsupported {
        check(&kubeconfig(cluster, user)).expect_err("kubeconfig is refused")
    }

    #[test]
    fn an_inline_token_with_an_inline_ca_is_accepted() {
        assert_eq!(check(&kubeconfig("", "    token: abc.def")), Ok(()));
    }

    #[test]
    fn an_inline_client_certificate_is_accepted() {
        let user = format!("    client-certificate-data: {CA}\n    client-key-data: {CA}");
        assert_eq!(check(&kubeconfig("", &user)), Ok(()));
    }

    #[test]
    fn insecure_skip_tls_verify_false_is_accepted() {
        assert_eq!(
            check(&kubeconfig(
                "    insecure-skip-tls-verify: false",
                "    token: abc"
            )),
            Ok(())
        );
    }

    #[test]
    fn an_exec_plugin_is_refused_naming_the_user() {
        let e = refused(
            "",
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: sh\n      args: [-c, 'touch /tmp/pwned']",
        );
        assert_eq!(e.field, "users[operator].user.exec");
        assert!(e.to_string().contains("run a command"), "{e}");
    }

    #[test]
    fn an_auth_provider_is_refused() {
        let e = refused(
            "",
            "    auth-provider:\n      name: oidc\n      config: {client-id: x}",
        );
        assert_eq!(e.field, "users[operator].user.auth-provider");
    }

    #[test]
    fn a_token_file_is_refused() {
        let e = refused(
            "",
            "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
        );
        assert_eq!(e.field, "users[operator].user.tokenFile");
        assert!(e.to_string().contains("token inline"), "{e}");
    }

    #[test]
    fn client_certificate_and_key_files_are_refused() {
        let e = refused("", "    client-certificate: /etc/cert.pem");
        assert_eq!(e.field, "users[operator].user.client-certificate");
        let e = refused("", "    client-key: /etc/key.pem");
        assert_eq!(e.field, "users[operator].user.client-key");
    }

    #[test]
    fn a_certificate_authority_file_is_refused() {
        let e = refused("    certificate-authority: /etc/ca.pem", "    token: abc");
        assert_eq!(e.field, "clusters[east].cluster.certificate-authority");
        assert!(e.to_string().contains("certificate-authority-data"), "{e}");
    }

    #[test]
    fn skipping_tls_verification_is_refused() {
        let e = refused("    insecure-skip-tls-verify: true", "    token: abc");
        assert_eq!(e.field, "clusters[east].cluster.insecure-skip-tls-verify");
    }

    #[test]
    fn a_plain_http_server_is_refused() {
        let config = Kubeconfig::from_yaml(
            "apiVersion: v1
kind: Config
clusters:
- name: east
  cluster: {server: 'HTTP://east.example:8080'}
users:
- name: operator
  user: {token: abc}
",
        )
        .expect("test kubeconfig parses");
        let e = check(&config).expect_err("plain http is refused");
        assert_eq!(e.field, "clusters[east].cluster.server");
        assert!(e.to_string().contains("unencrypted"), "{e}");
    }

    #[test]
    fn a_proxy_is_refused() {
        let e = refused("    proxy-url: http://proxy.example:3128", "    token: abc");
        assert_eq!(e.field, "clusters[east].cluster.proxy-url");
    }

    #[test]
    fn a_refused_user_outside_the_current_context_is_still_refused() {
        let mut kc = kubeconfig("", "    token: abc");
        let other = Kubeconfig::from_yaml(
            "users:\n- name: other\n  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}\n",
        )
        .expect("parses");
        kc.auth_infos.extend(other.auth_infos);
        assert_eq!(
            check(&kc).map_err(|e| e.field),
            Err("users[other].user.exec".to_owned())
        );
    }
}
