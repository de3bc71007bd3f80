//! Fuzz targets for what the router parses from outside: a request's tenant (every source, and
//! bearer tokens), the routing-table encoding and the chunks a table is published in. bolero
//! replays each target's corpus (`tests/__fuzz__/<target>/corpus`) and then generated inputs for
//! `cellstack_testkit::fuzz::time_per_target()` (5 s in the default tier, 60 s with `--full`);
//! a panic fails the test. Beyond "no panic", each target checks what must hold of any input.
//!
//! bolero's test mode is not coverage-guided, so random bytes alone would stop at the first
//! check (a magic number, JSON syntax). Each target's first input byte picks a shape: raw bytes,
//! or a valid input with the rest of the bytes written over it, so the later checks see
//! near-valid inputs too.

use std::time::Duration;

use cellstack_api::{
    routing::{
        CellRoute, CellState, Chunk, Compression, EdgeLimit, Manifest, PackedTable, RoutingTable,
        TenantEntry, TenantRoute, chunk,
        table::{FORMAT_VERSION, MAGIC},
    },
    tenant::TenantId,
};
use cellstack_router::{
    identify::{TenantFrom, identify},
    jwt::{JwtConfig, KeySet, Verifier},
};

fn budget() -> Duration {
    cellstack_testkit::fuzz::time_per_target()
}

/// Overwrites `base` with `patch` from an offset the patch's first two bytes name: a valid
/// input with a corrupted stretch.
fn corrupt(base: &[u8], patch: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    let (at, rest) = match patch {
        [a, b, rest @ ..] if !out.is_empty() => {
            (usize::from(u16::from_le_bytes([*a, *b])) % out.len(), rest)
        }
        _ => return out,
    };
    for (i, byte) in rest.iter().enumerate() {
        match out.get_mut(at + i) {
            Some(b) => *b = *byte,
            None => out.push(*byte),
        }
    }
    out
}

fn sample_table() -> RoutingTable {
    let cell = |name: &str| CellRoute {
        name: name.to_owned(),
        zone: Some("zone-a".into()),
        state: CellState::Active,
        lanes: (0..4)
            .map(|i| format!("{name}-lane-{i}.cells:8080"))
            .collect(),
        shard_size: 2,
        shard_seed: 7,
    };
    let tenants = (0..6)
        .map(|i| TenantRoute {
            id: TenantId::parse(&format!("tenant-{i}")).expect("a tenant id"),
            cell: i % 2,
            epoch: u64::from(i),
            shard_variant: 0,
            edge_limit: (i % 2 == 0).then_some(0),
        })
        .collect();
    RoutingTable::canonical(
        3,
        1_700_000_000_000,
        vec![cell("alpha"), cell("beta")],
        vec![EdgeLimit {
            requests: 100,
            period_ms: 1000,
            burst: 200,
        }],
        tenants,
    )
    .expect("a valid table")
}

/// The table decoders never panic; what the owned decoder accepts is a valid table that survives
/// its own encoding unchanged; and the router's decoder (`PackedTable`, every id in one buffer)
/// accepts exactly the same inputs and reads the same table from them.
#[test]
fn routing_table_decoder() {
    let valid = sample_table().encode().expect("encoded");
    bolero::check!()
        .with_test_time(budget())
        .for_each(|input: &[u8]| {
            let bytes = match input.split_first() {
                Some((0, rest)) => rest.to_vec(),
                Some((1, rest)) => [MAGIC.as_slice(), &FORMAT_VERSION.to_le_bytes(), rest].concat(),
                Some((_, rest)) => corrupt(&valid, rest),
                None => vec![],
            };
            let packed = PackedTable::decode(&bytes);
            assert_eq!(
                packed.is_ok(),
                RoutingTable::decode(&bytes).is_ok(),
                "the packed decoder and the owned one disagree on {bytes:?}"
            );
            if let Ok(table) = RoutingTable::decode(&bytes) {
                let packed = packed.expect("both decoders accept it");
                assert_eq!(packed, table);
                for t in &table.tenants {
                    assert_eq!(packed.tenant(t.id.as_str()), Some(&TenantEntry::from(t)));
                }
                table.validate().expect("a decoded table is valid");
                let again = table.encode().expect("a decoded table encodes");
                assert_eq!(RoutingTable::decode(&again).expect("decodes"), table);
                for t in &table.tenants {
                    assert_eq!(table.tenant(t.id.as_str()), Some(t));
                    let _ = table.lanes(t);
                }
            }
        });
}

/// Reassembly never panics and returns bytes only when they are exactly what the manifest
/// describes; a published table's chunks with any stretch overwritten are refused unless the
/// overwrite changed nothing. Each input is tried on the table stored as it is and stored
/// zstd-compressed.
#[test]
fn chunk_reassembly() {
    let valid = sample_table().encode().expect("encoded");
    let stored: Vec<_> = [Compression::None, Compression::Zstd]
        .into_iter()
        .map(|c| {
            let (manifest, chunks) = chunk::split(3, FORMAT_VERSION, &valid, c, 64).expect("split");
            let json = serde_json::to_vec(&manifest).expect("JSON");
            (manifest, chunks, json)
        })
        .collect();
    bolero::check!()
        .with_test_time(budget())
        .for_each(|input: &[u8]| {
            for (manifest, chunks, manifest_json) in &stored {
                reassembly_case(input, &valid, manifest, chunks, manifest_json);
            }
        });
}

fn reassembly_case(
    input: &[u8],
    valid: &[u8],
    manifest: &Manifest,
    chunks: &[Chunk],
    manifest_json: &[u8],
) {
    match input.split_first() {
        // A manifest as the pointer ConfigMap carries it, parsed as the router does, with
        // the real chunks.
        Some((0, rest)) => {
            let text = corrupt(manifest_json, rest);
            if let Ok(m) = serde_json::from_slice::<Manifest>(&text)
                && let Ok(bytes) = chunk::reassemble(&m, chunks)
            {
                assert_eq!(bytes, valid, "a manifest let other bytes through");
            }
        }
        // The real manifest with one chunk overwritten.
        Some((selector, rest)) => {
            let mut altered = chunks.to_vec();
            let i = usize::from(*selector) % altered.len();
            altered[i].data = corrupt(&altered[i].data, rest);
            match chunk::reassemble(manifest, &altered) {
                Ok(bytes) => assert_eq!(bytes, valid),
                Err(_) => assert_ne!(altered[i].data, chunks[i].data),
            }
        }
        None => {
            let none: Vec<Chunk> = vec![];
            assert!(chunk::reassemble(manifest, &none).is_err());
        }
    }
}

/// Splits `input` into (host, path and query, tenant header) at its first two 0xff bytes.
fn request_parts(input: &[u8]) -> (http::HeaderMap, Option<http::Uri>) {
    let mut parts = input.splitn(3, |b| *b == 0xff);
    let (host, path, tenant) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(host) {
        headers.insert(http::header::HOST, v);
    }
    if let Ok(v) = http::HeaderValue::from_bytes(tenant) {
        headers.insert("x-cellstack-tenant", v);
    }
    let uri = std::str::from_utf8(path)
        .ok()
        .and_then(|p| format!("/{p}").parse().ok());
    (headers, uri)
}

/// Every tenant source, on any host, path and tenant header: no panic, and a tenant it names is
/// a valid tenant id (what it forwards for a path-prefix tenant is the rest of the path).
#[test]
fn tenant_identification() {
    let sources: Vec<TenantFrom> = ["header", "path-prefix", "host-suffix:.tenants.example.com"]
        .iter()
        .map(|s| s.parse().expect("a source"))
        .collect();
    bolero::check!()
        .with_test_time(budget())
        .for_each(|input: &[u8]| {
            let (headers, uri) = request_parts(input);
            let Some(uri) = uri else { return };
            for from in &sources {
                if let Ok(id) = identify(from, None, &headers, &uri) {
                    assert_eq!(TenantId::parse(id.tenant.as_str()).as_ref(), Ok(&id.tenant));
                    if let Some(forward) = id.forward_path {
                        // `/<tenant>` and `/<tenant>/` go on as `/`, `/<tenant>/x` as `/x`.
                        let path = uri.path();
                        let tail = path
                            .strip_prefix('/')
                            .unwrap_or(path)
                            .strip_prefix(id.tenant.as_str())
                            .expect("the path starts with the tenant");
                        let forwarded = forward.split('?').next().unwrap_or_default();
                        assert_eq!(forwarded, if tail.is_empty() { "/" } else { tail });
                    }
                }
            }
            // Without a key set, the token source identifies nobody.
            assert!(identify(&TenantFrom::Jwt, None, &headers, &uri).is_err());
        });
}

/// Bearer tokens: whatever the bytes, the verifier answers without panicking and accepts
/// nothing (no input can carry a signature of the test key it does not have), including
/// well-formed headers and claims with arbitrary signatures.
#[test]
fn bearer_tokens() {
    let jwks = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","kid":"k","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    let config = JwtConfig {
        jwks_file: "jwks.json".into(),
        claim: "tenant".into(),
        audiences: vec!["a".into()],
        issuers: vec![],
        leeway: Duration::from_secs(30),
    };
    let keys = KeySet::parse(&config.jwks_file, jwks).expect("the key set");
    let verifier = Verifier::new(config, keys);
    // header {"alg":"EdDSA","kid":"k"} and claims {"tenant":"acme","aud":"a","exp":4102444800}
    let signed_part = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsifQ.eyJ0ZW5hbnQiOiJhY21lIiwiYXVkIjoiYSIsImV4cCI6NDEwMjQ0NDgwMH0";
    bolero::check!()
        .with_test_time(budget())
        .for_each(|input: &[u8]| {
            let token = match input.split_first() {
                Some((0, rest)) => String::from_utf8_lossy(rest).into_owned(),
                Some((_, rest)) => {
                    use base64::Engine as _;
                    format!(
                        "{signed_part}.{}",
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rest)
                    )
                }
                None => String::new(),
            };
            assert!(verifier.verify(&token).is_err(), "{token:?} was accepted");
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(http::header::AUTHORIZATION, v);
                assert!(verifier.tenant(&headers).is_err());
            }
        });
}
