//! Phase 1 of the request path: which tenant a request belongs to.
//!
//! Contract: from the request's headers and URI, and the configured source, return the tenant
//! and the path to forward (a path-prefix tenant is stripped from it), or a reason a person can
//! act on. Pure; no allocation beyond the id.

use std::str::FromStr;

use cellstack_api::{
    tenant::{TenantId, TenantIdError},
    wire::header,
};

/// Where the router finds the tenant id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantFrom {
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
            "header" => Ok(Self::Header),
            "path-prefix" => Ok(Self::PathPrefix),
            _ => match s.strip_prefix("host-suffix:") {
                Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 => {
                    Ok(Self::HostSuffix(suffix.to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "tenant source {s:?}: expected header, path-prefix or host-suffix:.<domain>"
                )),
            },
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
}

pub fn identify(
    from: &TenantFrom,
    headers: &http::HeaderMap,
    uri: &http::Uri,
) -> Result<Identified, IdentifyError> {
    match from {
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
            identify(&TenantFrom::Header, &h, &u)
                .unwrap()
                .tenant
                .as_str(),
            "acme"
        );

        let suffix: TenantFrom = "host-suffix:.tenants.example.com".parse().unwrap();
        let (h, u) = req(Some("Acme.Tenants.Example.com:8443"), None, "/v1/items");
        assert_eq!(identify(&suffix, &h, &u).unwrap().tenant.as_str(), "acme");

        let (h, u) = req(None, None, "/acme/v1/items/a?x=1");
        let id = identify(&TenantFrom::PathPrefix, &h, &u).unwrap();
        assert_eq!(id.tenant.as_str(), "acme");
        assert_eq!(id.forward_path.as_deref(), Some("/v1/items/a?x=1"));
    }

    #[test]
    fn refuses_with_a_reason() {
        let (h, u) = req(None, None, "/v1");
        assert!(
            identify(&TenantFrom::Header, &h, &u)
                .unwrap_err()
                .to_string()
                .contains("x-cellstack-tenant")
        );
        let (h, u) = req(None, Some("ACME"), "/v1");
        assert!(matches!(
            identify(&TenantFrom::Header, &h, &u),
            Err(IdentifyError::Invalid(_))
        ));
        let suffix: TenantFrom = "host-suffix:.t.example".parse().unwrap();
        let (h, u) = req(Some("a.b.t.example"), None, "/");
        assert!(
            identify(&suffix, &h, &u).is_err(),
            "nested labels are not a tenant"
        );
        let (h, u) = req(Some("other.example"), None, "/");
        assert!(identify(&suffix, &h, &u).is_err());
        let (h, u) = req(None, None, "/");
        assert!(identify(&TenantFrom::PathPrefix, &h, &u).is_err());
        assert!("host-suffix:example".parse::<TenantFrom>().is_err());
        assert!("cookie".parse::<TenantFrom>().is_err());
    }
}
