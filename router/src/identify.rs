//! Phase 1 of the request path: which tenant a request belongs to.
//!
//! Contract: from the request's headers and URI, and the configured source, return the tenant
//! and the path to forward (a path-prefix tenant is stripped from it), or a reason a person can
//! act on. Pure but for the token check's key set ([`crate::jwt`]); no allocation beyond the id.

use std::{fmt, str::FromStr};

use cellstack_api::{
    tenant::{TenantId, TenantIdError},
    wire::header,
};

use crate::jwt::{TokenError, Verifier};

/// Where the router finds the tenant id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantFrom {
    /// A claim of a verified bearer token ([`crate::jwt`]).
    Jwt,
    /// The `x-cellstack-tenant` header.
    Header,
    /// The first label of the Host, under this suffix: `acme.tenants.example.com` with suffix
    /// `.tenants.example.com`.
    HostSuffix(String),
    /// The first path segment: `/acme/v1/items` is tenant `acme`, forwarded as `/v1/items`.
    PathPrefix,
}

impl FromStr for TenantFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "jwt" => Ok(Self::Jwt),
            "header" => Ok(Self::Header),
            "path-prefix" => Ok(Self::PathPrefix),
            _ => match s.strip_prefix("host-suffix:") {
                Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 => {
                    Ok(Self::HostSuffix(suffix.to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "tenant source {s:?}: expected jwt, header, path-prefix or host-suffix:.<domain>"
                )),
            },
        }
    }
}

impl fmt::Display for TenantFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Jwt => f.write_str("jwt"),
            Self::Header => f.write_str("header"),
            Self::PathPrefix => f.write_str("path-prefix"),
            Self::HostSuffix(suffix) => write!(f, "host-suffix:{suffix}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    pub tenant: TenantId,
    /// The path (and query) to forward when it differs from the request's.
    pub forward_path: Option<String>,
}

/// Why no tenant could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifyError {
    #[error("missing {0}: every request names its tenant")]
    Missing(String),
    #[error("{0}")]
    Invalid(#[from] TenantIdError),
    /// `--tenant-from jwt` and no valid token: 401.
    #[error("{0}")]
    Unauthorized(#[from] TokenError),
}

/// The tenant of a request, from `from`; `jwt` is the key set of `--tenant-from jwt` (without
/// one, that source identifies nobody).
pub fn identify(
    from: &TenantFrom,
    jwt: Option<&Verifier>,
    headers: &http::HeaderMap,
    uri: &http::Uri,
) -> Result<Identified, IdentifyError> {
    match from {
        TenantFrom::Jwt => {
            let verifier = jwt.ok_or(IdentifyError::Unauthorized(TokenError::UnknownKey(
                "at all (the router has no key set)".into(),
            )))?;
            Ok(Identified {
                tenant: verifier.tenant(headers)?,
                forward_path: None,
            })
        }
        TenantFrom::Header => {
            let raw = headers
                .get(header::TENANT)
                .ok_or_else(|| IdentifyError::Missing(format!("{} header", header::TENANT)))?
                .to_str()
                .map_err(|_| {
                    IdentifyError::Missing(format!("a visible-ASCII {} header", header::TENANT))
                })?;
            Ok(Identified {
                tenant: TenantId::parse(raw)?,
                forward_path: None,
            })
        }
        TenantFrom::HostSuffix(suffix) => {
            let host = uri
                .host()
                .map(str::to_owned)
                .or_else(|| {
                    headers
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(|h| h.split(':').next().unwrap_or(h).to_owned())
                })
                .ok_or_else(|| IdentifyError::Missing("Host header".into()))?
                .to_ascii_lowercase();
            let label = host
                .strip_suffix(suffix.as_str())
                .filter(|l| !l.is_empty() && !l.contains('.'))
                .ok_or_else(|| {
                    IdentifyError::Missing(format!("a host of the form <tenant>{suffix}"))
                })?;
            Ok(Identified {
                tenant: TenantId::parse(label)?,
                forward_path: None,
            })
        }
        TenantFrom::PathPrefix => {
            let path = uri.path();
            let rest = path.strip_prefix('/').unwrap_or(path);
            let (first, tail) = rest.split_once('/').map_or((rest, ""), |(a, b)| (a, b));
            if first.is_empty() {
                return Err(IdentifyError::Missing(
                    "a tenant as the first path segment (/<tenant>/...)".into(),
                ));
            }
            let tenant = TenantId::parse(first)?;
            let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            Ok(Identified {
                tenant,
                forward_path: Some(format!("/{tail}{query}")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(
        host: Option<&str>,
        tenant_header: Option<&str>,
        uri: &str,
    ) -> (http::HeaderMap, http::Uri) {
        let mut headers = http::HeaderMap::new();
        if let Some(h) = host {
            headers.insert(http::header::HOST, h.parse().unwrap());
        }
        if let Some(t) = tenant_header {
            headers.insert(header::TENANT, t.parse().unwrap());
        }
        (headers, uri.parse().unwrap())
    }

    #[test]
    fn reads_the_tenant_from_each_source() {
        let (h, u) = req(None, Some("acme"), "/v1/items");
        assert_eq!(
            identify(&TenantFrom::Header, None, &h, &u)
                .unwrap()
                .tenant
                .as_str(),
            "acme"
        );

        let suffix: TenantFrom = "host-suffix:.tenants.example.com".parse().unwrap();
        let (h, u) = req(Some("Acme.Tenants.Example.com:8443"), None, "/v1/items");
        assert_eq!(
            identify(&suffix, None, &h, &u).unwrap().tenant.as_str(),
            "acme"
        );

        let (h, u) = req(None, None, "/acme/v1/items/a?x=1");
        let id = identify(&TenantFrom::PathPrefix, None, &h, &u).unwrap();
        assert_eq!(id.tenant.as_str(), "acme");
        assert_eq!(id.forward_path.as_deref(), Some("/v1/items/a?x=1"));
    }

    #[test]
    fn refuses_with_a_reason() {
        let (h, u) = req(None, None, "/v1");
        assert!(
            identify(&TenantFrom::Header, None, &h, &u)
                .unwrap_err()
                .to_string()
                .contains("x-cellstack-tenant")
        );
        let (h, u) = req(None, Some("ACME"), "/v1");
        assert!(matches!(
            identify(&TenantFrom::Header, None, &h, &u),
            Err(IdentifyError::Invalid(_))
        ));
        let suffix: TenantFrom = "host-suffix:.t.example".parse().unwrap();
        let (h, u) = req(Some("a.b.t.example"), None, "/");
        assert!(
            identify(&suffix, None, &h, &u).is_err(),
            "nested labels are not a tenant"
        );
        let (h, u) = req(Some("other.example"), None, "/");
        assert!(identify(&suffix, None, &h, &u).is_err());
        let (h, u) = req(None, None, "/");
        assert!(identify(&TenantFrom::PathPrefix, None, &h, &u).is_err());
        assert!("host-suffix:example".parse::<TenantFrom>().is_err());
        assert!(matches!(
            identify(&TenantFrom::Jwt, None, &h, &u),
            Err(IdentifyError::Unauthorized(_))
        ));
        assert!("cookie".parse::<TenantFrom>().is_err());
    }

    #[test]
    fn every_source_displays_as_it_parses() {
        for s in ["jwt", "header", "path-prefix", "host-suffix:.t.example"] {
            assert_eq!(s.parse::<TenantFrom>().map(|f| f.to_string()), Ok(s.into()));
        }
    }
}
