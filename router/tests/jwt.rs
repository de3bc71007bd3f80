//! `--tenant-from jwt` against real router, cell and Redis processes: the tenant is the verified
//! token's, whatever header the client sends; a missing, bad, expired or wrong-audience token is
//! refused with 401 and the reason before anything reaches a cell; every accepted algorithm
//! works; and the key set is re-read when its file changes, without a restart.

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use cellstack_api::{
    routing::RoutingTable,
    routing::TenantRoute,
    tenant::TenantId,
    wire::{ErrorBody, ErrorCode, header},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use reqwest::{Method, StatusCode};
use serde_json::json;

mod common;
use common::*;

const RSA: &[u8] = include_bytes!("fixtures/jwt/rsa.pem");
const RSA_OTHER: &[u8] = include_bytes!("fixtures/jwt/rsa-other.pem");
const EC: &[u8] = include_bytes!("fixtures/jwt/ec.pem");
const ED: &[u8] = include_bytes!("fixtures/jwt/ed.pem");
const AUDIENCE: &str = "cellstack-test";

fn encoding_key(alg: Algorithm, pem: &[u8]) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
        _ => EncodingKey::from_ed_pem(pem),
    }
    .expect("a test key")
}

fn jwk(alg: Algorithm, pem: &[u8], kid: &str) -> serde_json::Value {
    let mut jwk = Jwk::from_encoding_key(&encoding_key(alg, pem), alg).expect("a JWK");
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).expect("JSON")
}

/// Writes a JWKS the way a Secret's volume changes: a new file renamed over the old one.
fn write_jwks(path: &Path, keys: &[serde_json::Value]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(&json!({ "keys": keys })).expect("JSON"),
    )
    .expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn token(alg: Algorithm, pem: &[u8], kid: &str, claims: serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&h, &claims, &encoding_key(alg, pem)).expect("a token")
}

fn valid(tenant: &str) -> serde_json::Value {
    json!({"tenant": tenant, "aud": AUDIENCE, "exp": now() + 600})
}

/// One lane holding `tenants`, and a router in `--tenant-from jwt` mode on a JWKS of `keys`.
struct Stack {
    http: reqwest::Client,
    lane: Lane,
    router: Router,
    jwks: std::path::PathBuf,
}

async fn stack(name: &str, tenants: &[&str], keys: &[serde_json::Value]) -> Stack {
    let http = reqwest::Client::new();
    let dir = scratch(name);
    let lane = lane(&http, "jwt", &redis_url(), &dir).await;
    for t in tenants {
        put_tenant(&http, &lane, t, &active(1)).await;
    }
    let table = RoutingTable::canonical(
        1,
        0,
        vec![cell_route("jwt", &[&lane], 1)],
        vec![],
        tenants
            .iter()
            .map(|t| TenantRoute {
                id: TenantId::parse(t).expect("a tenant id"),
                cell: 0,
                epoch: 1,
                shard_variant: 0,
                edge_limit: None,
            })
            .collect(),
    )
    .expect("a table");
    let table_file = dir.join("table.bin");
    std::fs::write(&table_file, table.encode().expect("encoded")).expect("write");
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, keys);
    let jwks_arg = jwks.display().to_string();
    let router = router_with(
        &http,
        Some(&table_file),
        &dir.join("lkg.bin"),
        &[
            "--tenant-from",
            "jwt",
            "--jwt-jwks-file",
            &jwks_arg,
            "--jwt-audience",
            AUDIENCE,
            "--jwt-jwks-poll-ms",
            "100",
        ],
    )
    .await;
    wait_ok(&http, &format!("http://127.0.0.1:{}/readyz", router.admin)).await;
    Stack {
        http,
        lane,
        router,
        jwks,
    }
}

impl Stack {
    /// `GET /v1/whoami` through the router with `token` (if any) and a `x-cellstack-tenant`
    /// header claiming `claimed`.
    async fn whoami(&self, token: Option<&str>, claimed: &str) -> reqwest::Response {
        let mut req = self
            .http
            .request(
                Method::GET,
                format!("http://127.0.0.1:{}/v1/whoami", self.router.port),
            )
            .header(header::TENANT, claimed);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("an answer")
    }

    /// Requests the lane has answered on its tenant API.
    async fn lane_requests(&self) -> f64 {
        metric_sum(
            &metrics_of(&self.http, self.lane.admin).await,
            "cellstack_cell_requests_total",
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_tenant_header_reaches_the_tokens_tenant_not_the_claimed_one() {
    let (acme, victim) = (unique("acme"), unique("victim"));
    let s = stack(
        "jwt-forged",
        &[&acme, &victim],
        &[jwk(Algorithm::RS256, RSA, "k1")],
    )
    .await;
    let res = s
        .whoami(
            Some(&token(Algorithm::RS256, RSA, "k1", valid(&acme))),
            &victim,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value = res.json().await.expect("JSON");
    assert_eq!(body["tenant"], acme.as_str(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bad_expired_or_wrong_audience_token_gets_401_with_the_reason() {
    let acme = unique("acme");
    let s = stack("jwt-refused", &[&acme], &[jwk(Algorithm::RS256, RSA, "k1")]).await;
    let before = s.lane_requests().await;
    let cases = [
        (None, "missing bearer token"),
        (Some("not-a-jwt".to_owned()), "not a JWT"),
        (
            Some(token(Algorithm::RS256, RSA_OTHER, "k1", valid(&acme))),
            "signature does not verify",
        ),
        (
            Some(token(
                Algorithm::RS256,
                RSA,
                "k1",
                json!({"tenant": acme, "aud": AUDIENCE, "exp": now() - 120}),
            )),
            "expired",
        ),
        (
            Some(token(
                Algorithm::RS256,
                RSA,
                "k1",
                json!({"tenant": acme, "aud": "someone-else", "exp": now() + 600}),
            )),
            "audience",
        ),
        (
            Some(token(
                Algorithm::RS256,
                RSA,
                "k1",
                json!({"aud": AUDIENCE, "exp": now() + 600}),
            )),
            "lacks the tenant claim",
        ),
    ];
    for (token, reason) in cases {
        let res = s.whoami(token.as_deref(), &acme).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{reason}");
        assert_eq!(res.headers()[header::ERROR], "unauthorized");
        let challenge = res.headers()["www-authenticate"]
            .to_str()
            .expect("ASCII")
            .to_owned();
        assert!(
            challenge.starts_with("Bearer realm=\"cellstack\""),
            "{challenge}"
        );
        let body: ErrorBody = res.json().await.expect("an error body");
        assert_eq!(body.error, ErrorCode::Unauthorized);
        assert!(body.message.contains(reason), "{reason}: {}", body.message);
    }
    assert_eq!(
        s.lane_requests().await,
        before,
        "a refused request reached the cell"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_es256_and_eddsa_tokens_are_each_accepted() {
    let acme = unique("acme");
    let s = stack(
        "jwt-algorithms",
        &[&acme],
        &[
            jwk(Algorithm::RS256, RSA, "rsa"),
            jwk(Algorithm::ES256, EC, "ec"),
            jwk(Algorithm::EdDSA, ED, "ed"),
        ],
    )
    .await;
    for (alg, pem, kid) in [
        (Algorithm::RS256, RSA, "rsa"),
        (Algorithm::ES256, EC, "ec"),
        (Algorithm::EdDSA, ED, "ed"),
    ] {
        let res = s
            .whoami(Some(&token(alg, pem, kid, valid(&acme))), "ignored")
            .await;
        assert_eq!(res.status(), StatusCode::OK, "{alg:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_key_set_is_put_in_force_without_a_restart_and_a_bad_one_is_refused() {
    let acme = unique("acme");
    let s = stack(
        "jwt-rotation",
        &[&acme],
        &[jwk(Algorithm::RS256, RSA, "k1")],
    )
    .await;
    let new_key = token(Algorithm::RS256, RSA_OTHER, "k2", valid(&acme));
    assert_eq!(
        s.whoami(Some(&new_key), &acme).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // The new key joins the set: the router takes it up on its next read of the file.
    write_jwks(
        &s.jwks,
        &[
            jwk(Algorithm::RS256, RSA, "k1"),
            jwk(Algorithm::RS256, RSA_OTHER, "k2"),
        ],
    );
    wait_until(
        "the new key to be accepted",
        Duration::from_secs(10),
        async || s.whoami(Some(&new_key), &acme).await.status() == StatusCode::OK,
    )
    .await;
    let metrics = s.router.metrics(&s.http).await;
    assert_eq!(
        metric_sum(
            &metrics,
            "cellstack_router_jwks_reloads_total{result=\"loaded\"}"
        ),
        1.0
    );
    assert_eq!(metric_sum(&metrics, "cellstack_router_jwks_keys"), 2.0);

    // A file that is no key set is refused; the keys in force stay.
    std::fs::write(&s.jwks, b"{\"keys\": 7}").expect("write");
    wait_until(
        "the bad file to be refused",
        Duration::from_secs(10),
        async || {
            metric_sum(
                &s.router.metrics(&s.http).await,
                "cellstack_router_jwks_reloads_total{result=\"refused\"}",
            ) == 1.0
        },
    )
    .await;
    assert_eq!(
        s.whoami(Some(&new_key), &acme).await.status(),
        StatusCode::OK
    );
    let old_key = token(Algorithm::RS256, RSA, "k1", valid(&acme));
    assert_eq!(
        s.whoami(Some(&old_key), &acme).await.status(),
        StatusCode::OK
    );
}

#[test]
fn the_router_does_not_start_in_jwt_mode_without_a_key_set_or_an_audience() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cellstack-router"))
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .output()
            .expect("run the router");
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = scratch("jwt-no-keys").join("absent.json");
    let missing = missing.display().to_string();
    assert!(run(&["--tenant-from", "jwt", "--jwt-audience", "a"]).contains("--jwt-jwks-file"));
    assert!(run(&["--tenant-from", "jwt", "--jwt-jwks-file", &missing]).contains("--jwt-audience"));
    assert!(
        run(&[
            "--tenant-from",
            "jwt",
            "--jwt-jwks-file",
            &missing,
            "--jwt-audience",
            "a"
        ])
        .contains("cannot read the JWKS file")
    );
    // No source at all is refused too: trusting the client's header is a choice to spell out.
    assert!(run(&[]).contains("--tenant-from"));
}

/// The worked example of docs/router.md (`examples/jwt/jwt.sh`, openssl and coreutils only):
/// its JWKS and its token get a request through a real router to the token's tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worked_examples_key_set_and_token_are_accepted() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jwt/jwt.sh");
    let dir = scratch("jwt-example");
    let dir_arg = dir.display().to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&script)
            .args(args)
            .output()
            .expect("run examples/jwt/jwt.sh");
        assert!(
            out.status.success(),
            "jwt.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("UTF-8")
            .trim()
            .to_owned()
    };
    run(&["key", &dir_arg]);
    let jwks: serde_json::Value = serde_json::from_str(&run(&["jwks", &dir_arg])).expect("a JWKS");
    let acme = unique("acme");
    let token = run(&["token", &dir_arg, &acme, AUDIENCE, "300"]);
    let s = stack(
        "jwt-example-router",
        &[&acme],
        jwks["keys"].as_array().expect("keys"),
    )
    .await;
    let res = s.whoami(Some(&token), "someone-else").await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value = res.json().await.expect("JSON");
    assert_eq!(body["tenant"], acme.as_str(), "{body}");
}
