//! Verified tenant identity (`--tenant-from jwt`): the tenant is a claim of a JSON Web Token the
//! client presents as `Authorization: Bearer <token>`, signed by a key of a JSON Web Key Set the
//! router reads from a file (in Kubernetes, a mounted Secret) and re-reads when it changes.
//!
//! What is accepted, and why:
//! - **Algorithms**: RS256, ES256 (P-256) and EdDSA (Ed25519), each only with a key of its own
//!   type. Never `none`, never HMAC: a JWKS is public material, and a router that accepted
//!   `HS256` with a public key as the secret would take tokens anyone can sign.
//! - **Keys**: the token's `kid` picks the key; a token without one is tried against every key
//!   of its algorithm. Keys whose `use` is not `sig`, or whose `alg` is one of the others, are
//!   left out (and logged) when the set is read.
//! - **Claims**: `exp` and `aud` are required, `aud` must name a configured audience, `iss` one
//!   of the configured issuers when any are configured, `nbf` is honoured; `--jwt-leeway-secs`
//!   of clock skew is allowed either way. The tenant claim must be a string that is a valid
//!   tenant id.
//!
//! The set in force is swapped whole ([`ArcSwap`]) when a changed file parses and holds at least
//! one usable key; a file that does not is refused, logged and counted, and the previous set
//! stays (a bad rotation never locks every client out).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use cellstack_api::tenant::TenantId;
use cellstack_runtime::reload::Reload;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};

/// The algorithms a token may be signed with.
pub const ACCEPTED: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// How tokens are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// The JWKS file.
    pub jwks_file: PathBuf,
    /// The claim that holds the tenant id.
    pub claim: String,
    /// Accepted audiences (`aud`): at least one.
    pub audiences: Vec<String>,
    /// Accepted issuers (`iss`); empty: any.
    pub issuers: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Why a JWKS file is refused.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read the JWKS file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the JWKS file {path} is not a JSON Web Key Set: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "the JWKS file {path} holds no usable signing key (RS256, ES256 on P-256 or EdDSA on Ed25519, `use` sig){skipped}"
    )]
    NoUsableKey { path: PathBuf, skipped: String },
}

/// Why a request's token is refused. The message is what the client reads in the 401's body
/// and `WWW-Authenticate` header: it says what is wrong, never anything about the keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing bearer token: send `Authorization: Bearer <JWT>`")]
    Missing,
    #[error("the Authorization header is not `Bearer <JWT>`")]
    NotBearer,
    #[error("the bearer token is not a JWT: {0}")]
    Malformed(String),
    #[error("the token is signed with {0}; accepted: RS256, ES256, EdDSA")]
    Algorithm(String),
    #[error("no signing key {0} is trusted (the router re-reads its key set when it changes)")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's audience (aud) is not one this router accepts")]
    Audience,
    #[error("the token's issuer (iss) is not one this router accepts")]
    Issuer,
    #[error("the token lacks the {0} claim")]
    MissingClaim(String),
    #[error("the token's {claim} claim is not a tenant id: {reason}")]
    Tenant { claim: String, reason: String },
}

/// One usable key.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys in force.
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Reads a JWKS document, keeping the keys this router can use.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, JwksError> {
        let set: JwkSet = serde_json::from_slice(bytes).map_err(|source| JwksError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
            match usable(jwk) {
                Ok((alg, key)) => keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                }),
                Err(why) => {
                    tracing::warn!(key = %name, path = %path.display(), why, "JWKS key left out");
                    skipped.push(format!("{name}: {why}"));
                }
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey {
                path: path.to_owned(),
                skipped: if skipped.is_empty() {
                    "; it has no keys".into()
                } else {
                    format!("; left out: {}", skipped.join("; "))
                },
            });
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A JWK's algorithm (from its `alg`, else its key type and curve) and decoding key, or why it
/// cannot be used.
fn usable(jwk: &Jwk) -> Result<(Algorithm, DecodingKey), &'static str> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Err("its use is not sig");
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric key: HMAC tokens are never accepted");
        }
        _ => return Err("not an RSA, P-256 or Ed25519 key"),
    };
    let alg = match jwk.common.key_algorithm {
        None => by_type,
        Some(KeyAlgorithm::RS256) if by_type == Algorithm::RS256 => by_type,
        Some(KeyAlgorithm::ES256) if by_type == Algorithm::ES256 => by_type,
        Some(KeyAlgorithm::EdDSA) if by_type == Algorithm::EdDSA => by_type,
        Some(_) => return Err("its alg is not RS256, ES256 or EdDSA for its key type"),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "its key parameters are invalid")?;
    Ok((alg, key))
}

/// Checks tokens against the key set in force.
pub struct Verifier {
    config: JwtConfig,
    keys: ArcSwap<KeySet>,
    /// One validation per accepted algorithm, built once.
    validations: HashMap<Algorithm, Validation>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("config", &self.config)
            .field("keys", &self.keys())
            .finish()
    }
}

impl Verifier {
    /// A verifier with the key set read from `config.jwks_file` now: a file that cannot be read
    /// or holds no usable key is an error (the router does not start without keys).
    pub fn load(config: JwtConfig) -> Result<Self, JwksError> {
        let bytes = std::fs::read(&config.jwks_file).map_err(|source| JwksError::Read {
            path: config.jwks_file.clone(),
            source,
        })?;
        let keys = KeySet::parse(&config.jwks_file, &bytes)?;
        Ok(Self::new(config, keys))
    }

    pub fn new(config: JwtConfig, keys: KeySet) -> Self {
        let validations = ACCEPTED
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.set_required_spec_claims(&["exp", "aud"]);
                v.set_audience(&config.audiences);
                if !config.issuers.is_empty() {
                    v.set_issuer(&config.issuers);
                }
                v.leeway = config.leeway.as_secs();
                v.validate_nbf = true;
                (alg, v)
            })
            .collect();
        Self {
            config,
            keys: ArcSwap::from_pointee(keys),
            validations,
        }
    }

    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// Number of keys in force.
    pub fn keys(&self) -> usize {
        self.keys.load().len()
    }

    /// Puts `keys` in force.
    pub fn replace(&self, keys: KeySet) {
        self.keys.store(Arc::new(keys));
    }

    /// The tenant of a request with these headers: its bearer token verified, the tenant claim
    /// read.
    pub fn tenant(&self, headers: &http::HeaderMap) -> Result<TenantId, TokenError> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(TokenError::Missing)?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::NotBearer)?;
        self.verify(token)
    }

    /// Verifies `token` and reads its tenant claim.
    pub fn verify(&self, token: &str) -> Result<TenantId, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let validation = self
            .validations
            .get(&header.alg)
            .ok_or_else(|| TokenError::Algorithm(format!("{:?}", header.alg)))?;
        let keys = self.keys.load();
        let mut candidates = keys.keys.iter().filter(|k| {
            k.alg == header.alg
                && header
                    .kid
                    .as_ref()
                    .is_none_or(|kid| k.kid.as_ref() == Some(kid))
        });
        let Some(first) = candidates.next() else {
            return Err(TokenError::UnknownKey(match &header.kid {
                Some(kid) => format!("with kid {kid:?} for {:?}", header.alg),
                None => format!("for {:?}", header.alg),
            }));
        };
        let mut result = decode(token, &first.key, validation);
        // Only a signature that does not verify is worth trying the next key for; any other
        // failure is the token's whatever key signed it.
        for key in candidates {
            if !matches!(result, Err(TokenError::Signature)) {
                break;
            }
            result = decode(token, &key.key, validation);
        }
        let claims = result?;
        let claim = &self.config.claim;
        let value = claims
            .get(claim)
            .ok_or_else(|| TokenError::MissingClaim(claim.clone()))?;
        let raw = value.as_str().ok_or_else(|| TokenError::Tenant {
            claim: claim.clone(),
            reason: "it is not a string".into(),
        })?;
        TenantId::parse(raw).map_err(|e| TokenError::Tenant {
            claim: claim.clone(),
            reason: e.to_string(),
        })
    }
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<serde_json::Map<String, serde_json::Value>, TokenError> {
    jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::Signature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidAudience => TokenError::Audience,
            ErrorKind::InvalidIssuer => TokenError::Issuer,
            ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
            ErrorKind::InvalidAlgorithm => TokenError::Algorithm("another key's algorithm".into()),
            _ => TokenError::Malformed(e.to_string()),
        })
}

/// Re-reads the JWKS file every `every` until `shutdown`
/// ([`cellstack_runtime::reload::watch_files`]), putting a changed file in force when it holds
/// usable keys. `on_reload` hears of every change, with the number of keys in force after it.
pub async fn watch(
    verifier: Arc<Verifier>,
    every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
    on_reload: impl Fn(Reload, usize) + Send + 'static,
) {
    let path = verifier.config.jwks_file.clone();
    cellstack_runtime::reload::watch_files(vec![path.clone()], every, shutdown, move |files| {
        let outcome = match KeySet::parse(&path, &files[0]) {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), path = %path.display(), "JWKS reloaded");
                verifier.replace(keys);
                Reload::Loaded
            }
            Err(error) => {
                tracing::error!(%error, "JWKS file refused; keeping the keys in force");
                Reload::Refused
            }
        };
        on_reload(outcome, verifier.keys());
        outcome
    })
    .await;
}

/// The `WWW-Authenticate` value of a 401 for `error` (RFC 6750 section 3): no error code when
/// the request had no token at all, `invalid_token` with a description otherwise.
pub fn www_authenticate(error: &TokenError) -> http::HeaderValue {
    let value = match error {
        TokenError::Missing => r#"Bearer realm="cellstack""#.to_owned(),
        other => {
            // A quoted-string without quotes or backslashes (the description is ours, but a
            // claim name comes from the configuration).
            let description: String = other
                .to_string()
                .chars()
                .map(|c| match c {
                    '"' | '\\' => '\'',
                    c if c.is_ascii() && !c.is_ascii_control() => c,
                    _ => '?',
                })
                .collect();
            format!(
                r#"Bearer realm="cellstack", error="invalid_token", error_description="{description}""#
            )
        }
    };
    http::HeaderValue::from_str(&value)
        .unwrap_or_else(|_| http::HeaderValue::from_static(r#"Bearer realm="cellstack""#))
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{EncodingKey, Header, jwk::Jwk};
    use serde_json::json;

    use super::*;

    const RSA: &[u8] = include_bytes!("../tests/fixtures/jwt/rsa.pem");
    const RSA_OTHER: &[u8] = include_bytes!("../tests/fixtures/jwt/rsa-other.pem");
    const EC: &[u8] = include_bytes!("../tests/fixtures/jwt/ec.pem");
    const ED: &[u8] = include_bytes!("../tests/fixtures/jwt/ed.pem");

    fn encoding_key(alg: Algorithm, pem: &[u8]) -> EncodingKey {
        match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
            _ => EncodingKey::from_ed_pem(pem),
        }
        .expect("a test key")
    }

    fn jwk(alg: Algorithm, pem: &[u8], kid: Option<&str>) -> serde_json::Value {
        let mut jwk = Jwk::from_encoding_key(&encoding_key(alg, pem), alg).expect("a JWK");
        jwk.common.key_id = kid.map(str::to_owned);
        serde_json::to_value(jwk).expect("JSON")
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    }

    fn sign(alg: Algorithm, pem: &[u8], kid: Option<&str>, claims: serde_json::Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &encoding_key(alg, pem)).expect("a token")
    }

    fn claims(tenant: &str) -> serde_json::Value {
        json!({"tenant": tenant, "aud": "cellstack", "exp": now() + 300})
    }

    fn verifier(keys: Vec<serde_json::Value>) -> Verifier {
        let config = JwtConfig {
            jwks_file: "jwks.json".into(),
            claim: "tenant".into(),
            audiences: vec!["cellstack".into()],
            issuers: vec![],
            leeway: Duration::from_secs(5),
        };
        let set = serde_json::to_vec(&json!({ "keys": keys })).expect("JSON");
        Verifier::new(
            config.clone(),
            KeySet::parse(&config.jwks_file, &set).expect("keys"),
        )
    }

    #[test]
    fn each_accepted_algorithm_verifies_with_its_key() {
        let v = verifier(vec![
            jwk(Algorithm::RS256, RSA, Some("r")),
            jwk(Algorithm::ES256, EC, Some("e")),
            jwk(Algorithm::EdDSA, ED, Some("d")),
        ]);
        for (alg, pem, kid) in [
            (Algorithm::RS256, RSA, "r"),
            (Algorithm::ES256, EC, "e"),
            (Algorithm::EdDSA, ED, "d"),
        ] {
            let token = sign(alg, pem, Some(kid), claims("acme"));
            assert_eq!(v.verify(&token).map(|t| t.to_string()), Ok("acme".into()));
            // Without a kid the token is tried against the keys of its algorithm.
            let token = sign(alg, pem, None, claims("acme"));
            assert_eq!(v.verify(&token).map(|t| t.to_string()), Ok("acme".into()));
        }
    }

    #[test]
    fn a_token_is_refused_with_the_reason() {
        let v = verifier(vec![jwk(Algorithm::RS256, RSA, Some("r"))]);
        let refused = |claims, pem, kid| v.verify(&sign(Algorithm::RS256, pem, kid, claims));
        assert_eq!(
            refused(
                json!({"tenant": "acme", "aud": "cellstack", "exp": now() - 60}),
                RSA,
                None
            ),
            Err(TokenError::Expired)
        );
        assert_eq!(
            refused(
                json!({"tenant": "acme", "aud": "other", "exp": now() + 60}),
                RSA,
                None
            ),
            Err(TokenError::Audience)
        );
        assert_eq!(
            refused(json!({"tenant": "acme", "exp": now() + 60}), RSA, None),
            Err(TokenError::MissingClaim("aud".into()))
        );
        assert_eq!(
            refused(json!({"tenant": "acme", "aud": "cellstack"}), RSA, None),
            Err(TokenError::MissingClaim("exp".into()))
        );
        assert_eq!(
            refused(
                json!({"tenant": "acme", "aud": "cellstack", "exp": now() + 600, "nbf": now() + 300}),
                RSA,
                None
            ),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            refused(json!({"aud": "cellstack", "exp": now() + 60}), RSA, None),
            Err(TokenError::MissingClaim("tenant".into()))
        );
        assert!(matches!(
            refused(claims("Not A Tenant"), RSA, None),
            Err(TokenError::Tenant { .. })
        ));
        assert!(matches!(
            refused(
                json!({"tenant": 7, "aud": "cellstack", "exp": now() + 60}),
                RSA,
                None
            ),
            Err(TokenError::Tenant { .. })
        ));
        // Signed by a key the set does not hold, under a kid it does or does not know.
        assert_eq!(
            refused(claims("acme"), RSA_OTHER, Some("r")),
            Err(TokenError::Signature)
        );
        assert!(matches!(
            refused(claims("acme"), RSA_OTHER, Some("gone")),
            Err(TokenError::UnknownKey(_))
        ));
        // An algorithm the set has no key for.
        assert!(matches!(
            v.verify(&sign(Algorithm::ES256, EC, None, claims("acme"))),
            Err(TokenError::UnknownKey(_))
        ));
        assert!(matches!(
            v.verify("not.a.jwt"),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn hmac_and_none_are_never_accepted() {
        // A token "signed" with HS256 using the RSA key's public JWK as the secret: the classic
        // algorithm-confusion forgery.
        let v = verifier(vec![jwk(Algorithm::RS256, RSA, Some("r"))]);
        let public = serde_json::to_vec(&jwk(Algorithm::RS256, RSA, Some("r"))).expect("JSON");
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims("acme"),
            &EncodingKey::from_secret(&public).expect("a secret"),
        )
        .expect("a token");
        assert_eq!(
            v.verify(&forged),
            Err(TokenError::Algorithm("HS256".into()))
        );
        // `alg: none` does not even parse as a header jsonwebtoken knows.
        let none = "eyJhbGciOiJub25lIn0.eyJ0ZW5hbnQiOiJhY21lIn0.";
        assert!(v.verify(none).is_err());
        // A JWKS that holds only a symmetric key holds no usable key.
        let set = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]});
        let err = KeySet::parse(
            Path::new("j.json"),
            &serde_json::to_vec(&set).expect("JSON"),
        )
        .err()
        .expect("refused");
        assert!(err.to_string().contains("symmetric"), "{err}");
    }

    #[test]
    fn keys_for_encryption_or_another_algorithm_are_left_out() {
        let mut enc = jwk(Algorithm::RS256, RSA, Some("enc"));
        enc["use"] = json!("enc");
        let mut wrong_alg = jwk(Algorithm::ES256, EC, Some("es"));
        wrong_alg["alg"] = json!("RS256");
        let set = json!({ "keys": [enc, wrong_alg, jwk(Algorithm::EdDSA, ED, Some("d"))] });
        let keys = KeySet::parse(
            Path::new("j.json"),
            &serde_json::to_vec(&set).expect("JSON"),
        )
        .expect("one usable key");
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn the_tenant_is_read_from_a_bearer_authorization_header_only() {
        let v = verifier(vec![jwk(Algorithm::EdDSA, ED, None)]);
        let token = sign(Algorithm::EdDSA, ED, None, claims("acme"));
        let mut headers = http::HeaderMap::new();
        assert_eq!(v.tenant(&headers), Err(TokenError::Missing));
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Basic {token}").parse().expect("a header"),
        );
        assert_eq!(v.tenant(&headers), Err(TokenError::NotBearer));
        headers.insert(
            http::header::AUTHORIZATION,
            format!("bearer {token}").parse().expect("a header"),
        );
        assert_eq!(v.tenant(&headers).map(|t| t.to_string()), Ok("acme".into()));
    }

    #[test]
    fn the_challenge_names_the_error_only_when_a_token_was_sent() {
        assert_eq!(
            www_authenticate(&TokenError::Missing),
            r#"Bearer realm="cellstack""#
        );
        let v = www_authenticate(&TokenError::Expired);
        let v = v.to_str().expect("ASCII");
        assert!(v.contains(r#"error="invalid_token""#), "{v}");
        assert!(v.contains("expired"), "{v}");
        let v = www_authenticate(&TokenError::MissingClaim("a\"b".into()));
        assert_eq!(v.to_str().expect("ASCII").matches('"').count(), 6, "{v:?}");
    }
}
