//! The API server — not just our code — enforces every validation rule of the CRDs, and
//! says what is wrong in terms a person can act on.
//!
//! Runs against the real kube-apiserver started by the test command (`e2e/control-plane`).

use anyhow::Context;
use cellstack_testkit::{
    api_resource, client, documents_in, dynamic_api, ensure_crds, example_documents, kubectl,
    unique_name,
};
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// A valid object of `kind` named `name`, to mutate into invalid ones.
fn valid(kind: &str, name: &str) -> Value {
    let spec = match kind {
        "Cell" => json!({
            "lanes": 2,
            "zone": "zone-a",
            "datastore": {"managed": {"storage": "Ephemeral"}},
            "services": [{"name": "api", "image": "example.org/api:1.0", "env": [{"name": "LOG", "value": "info"}]}],
        }),
        "TenantAssignment" => {
            json!({"tenantId": name, "tier": "standard", "automatic": {"zones": ["zone-a"]}})
        }
        "RateLimitPolicy" => json!({
            "selector": {"tiers": ["standard"]},
            "limits": [{"name": "requests", "requests": 10, "burst": 20}],
        }),
        "ShuffleShardPool" => json!({"cells": {"names": ["alpha"]}, "lanes": 8, "shardSize": 2}),
        "CellRollout" => json!({
            "cells": {"matchLabels": {"cellstack.dev/pool": "standard"}},
            "version": "v1.5.0",
            "services": [{"name": "api", "image": "example.org/api:1.5.0"}],
            "strategy": {"firstWave": 1, "waveGrowth": 2, "bakeSeconds": 60},
            "gate": {"maxErrorRateIncrease": 0.01, "maxP99Ratio": 2.0},
        }),
        "MemberCluster" => json!({
            "kubeconfigSecretRef": {"name": "member-east", "key": "value"},
            "region": "us-east-1",
        }),
        other => panic!("no valid fixture for {other}"),
    };
    json!({
        "apiVersion": "cellstack.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// JSON merge patch (RFC 7386): `null` removes a field.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

struct Invalid {
    why: &'static str,
    kind: &'static str,
    /// Merged into the valid object's `spec` (or, with a top-level `metadata` key, into the
    /// object itself).
    change: Value,
    /// The field the API server must name.
    field: &'static str,
    /// Part of the message a person reads.
    message: &'static str,
}

fn invalid(
    why: &'static str,
    kind: &'static str,
    change: Value,
    field: &'static str,
    message: &'static str,
) -> Invalid {
    Invalid {
        why,
        kind,
        change,
        field,
        message,
    }
}

/// One object per validation rule (and per range or enum), each with the field it must name.
fn invalid_objects() -> Vec<Invalid> {
    vec![
        // Cell
        invalid(
            "cell name with a dot",
            "Cell",
            json!({"metadata": {"name": "has.dot"}}),
            "metadata.name",
            "cell name must be at most 40",
        ),
        invalid(
            "cell cluster that is not a MemberCluster name",
            "Cell",
            json!({"cluster": "East_1"}),
            "spec.cluster",
            "cluster must be the name of a MemberCluster",
        ),
        invalid(
            "zero lanes",
            "Cell",
            json!({"lanes": 0}),
            "spec.lanes",
            "should be greater than or equal to 1",
        ),
        invalid(
            "65 lanes",
            "Cell",
            json!({"lanes": 65}),
            "spec.lanes",
            "should be less than or equal to 64",
        ),
        invalid(
            "zone with a space",
            "Cell",
            json!({"zone": "zone a"}),
            "spec.zone",
            "zone must be a Kubernetes label value",
        ),
        invalid(
            "region with a slash",
            "Cell",
            json!({"region": "eu/west"}),
            "spec.region",
            "region must be a Kubernetes label value",
        ),
        invalid(
            "version with a space",
            "Cell",
            json!({"version": "v 1"}),
            "spec.version",
            "version must be a Kubernetes label value",
        ),
        invalid(
            "duplicate service names",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1"}, {"name": "api", "image": "x/b:1"}]}),
            "spec.services",
            "service names must be unique",
        ),
        invalid(
            "service name with capitals",
            "Cell",
            json!({"services": [{"name": "Api", "image": "x/a:1"}]}),
            "spec.services[0].name",
            "service name must be lowercase",
        ),
        invalid(
            "image without a tag",
            "Cell",
            json!({"services": [{"name": "api", "image": "registry:5000/api"}]}),
            "spec.services[0].image",
            "image must name an explicit tag or digest",
        ),
        invalid(
            "port out of range",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1", "port": 70000}]}),
            "spec.services[0].port",
            "should be less than or equal to 65535",
        ),
        invalid(
            "env name starting with a digit",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1", "env": [{"name": "1X"}]}]}),
            "spec.services[0].env[0].name",
            "environment variable names must be letters",
        ),
        invalid(
            "duplicate env names",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1", "env": [{"name": "A"}, {"name": "A", "value": "2"}]}]}),
            "spec.services[0].env",
            "environment variable names must be unique",
        ),
        invalid(
            "both datastores",
            "Cell",
            json!({"datastore": {"managed": {}, "external": {"urlSecretRef": {"name": "redis"}}}}),
            "spec.datastore",
            "set exactly one of datastore.managed",
        ),
        invalid(
            "no datastore",
            "Cell",
            json!({"datastore": {"managed": null}}),
            "spec.datastore",
            "set exactly one of datastore.managed",
        ),
        invalid(
            "size on ephemeral storage",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Ephemeral", "size": "1Gi"}}}),
            "spec.datastore.managed.size",
            "size applies only to Persistent storage",
        ),
        invalid(
            "a replicated ephemeral datastore",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Ephemeral", "replicas": 3}}}),
            "spec.datastore.managed.replicas",
            "an Ephemeral datastore runs exactly 1 Redis pod",
        ),
        invalid(
            "zero datastore replicas",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Persistent", "replicas": 0}}}),
            "spec.datastore.managed.replicas",
            "should be greater than or equal to 1",
        ),
        invalid(
            "8 datastore replicas",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Persistent", "replicas": 8}}}),
            "spec.datastore.managed.replicas",
            "should be less than or equal to 7",
        ),
        invalid(
            "unknown storage kind",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Tape"}}}),
            "spec.datastore.managed.storage",
            "supported values: \"Persistent\", \"Ephemeral\"",
        ),
        invalid(
            "secret name with capitals",
            "Cell",
            json!({"datastore": {"managed": null, "external": {"urlSecretRef": {"name": "Redis"}}}}),
            "spec.datastore.external.urlSecretRef.name",
            "name must be a valid Secret name",
        ),
        invalid(
            "secret key with a slash",
            "Cell",
            json!({"datastore": {"managed": null, "external": {"urlSecretRef": {"name": "redis", "key": "a/b"}}}}),
            "spec.datastore.external.urlSecretRef.key",
            "key must be a valid Secret key",
        ),
        invalid(
            "zero capacity",
            "Cell",
            json!({"capacity": {"maxTenants": 0}}),
            "spec.capacity.maxTenants",
            "should be greater than or equal to 1",
        ),
        invalid(
            "weight above 1000",
            "Cell",
            json!({"capacity": {"weight": 1001}}),
            "spec.capacity.weight",
            "should be less than or equal to 1000",
        ),
        invalid(
            "image with an empty tag",
            "Cell",
            json!({"services": [{"name": "api", "image": "example.org/api:"}]}),
            "spec.services[0].image",
            "image must be a container image reference",
        ),
        invalid(
            "image with an empty digest",
            "Cell",
            json!({"services": [{"name": "api", "image": "example.org/api@"}]}),
            "spec.services[0].image",
            "no empty tag or digest, spaces or control characters; for example 'registry.example/svc:1.2.3'; got 'example.org/api@'",
        ),
        invalid(
            "image with a digest that is no digest",
            "Cell",
            json!({"services": [{"name": "api", "image": "example.org/api@sha256:abc"}]}),
            "spec.services[0].image",
            "image must be a container image reference",
        ),
        invalid(
            "image with a capital in the repository",
            "Cell",
            json!({"services": [{"name": "api", "image": "example.org/Api:1.0"}]}),
            "spec.services[0].image",
            "got 'example.org/Api:1.0'",
        ),
        invalid(
            "image with a tab",
            "Cell",
            json!({"services": [{"name": "api", "image": "example.org/api:1.0\t"}]}),
            "spec.services[0].image",
            "got a value with a control character",
        ),
        invalid(
            "image with a line break",
            "Cell",
            json!({"services": [{"name": "api", "image": "example.org/api:1.0\nx"}]}),
            "spec.services[0].image",
            "got a value with a control character",
        ),
        invalid(
            "service on the lane's admin port",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1", "port": 9090}]}),
            "spec.services[0].port",
            "ports 8080, 9090, 9091 and 7070 are the cell runtime's",
        ),
        invalid(
            "service on the runtime's state API port",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1", "port": 7070}]}),
            "spec.services[0].port",
            "ports 8080, 9090, 9091 and 7070 are the cell runtime's",
        ),
        invalid(
            "two services on one port",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1"}, {"name": "sidecar", "image": "x/b:1", "port": 8081, "routes": ["/s"]}]}),
            "spec.services",
            "service ports must be unique within a cell",
        ),
        invalid(
            "a service named like the runtime's container",
            "Cell",
            json!({"services": [{"name": "cell", "image": "x/a:1"}]}),
            "spec.services[0].name",
            "'cell' is the name of the lane's cell runtime container",
        ),
        invalid(
            "two services taking every path",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1"}, {"name": "reports", "image": "x/b:1", "port": 8082}]}),
            "spec.services",
            "at most one service may leave routes empty",
        ),
        invalid(
            "one route prefix for two services",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1", "routes": ["/orders"]},
                                {"name": "reports", "image": "x/b:1", "port": 8082, "routes": ["/reports", "/orders"]}]}),
            "spec.services",
            "a route prefix may belong to one service only",
        ),
        invalid(
            "a route that is not a path",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1", "routes": ["orders"]}]}),
            "spec.services[0].routes",
            "a route is a path prefix starting with '/'",
        ),
        invalid(
            "a health path that is not a path",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1", "healthPath": "healthz"}]}),
            "spec.services[0].healthPath",
            "healthPath must be a path starting with '/'",
        ),
        invalid(
            "a service timeout of zero",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1", "timeoutSeconds": 0}]}),
            "spec.services[0].timeoutSeconds",
            "should be greater than or equal to 1",
        ),
        invalid(
            "env overriding the Redis the operator gives the lane",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1", "env": [{"name": "CELLSTACK_REDIS_URL", "value": "redis://elsewhere"}]}]}),
            "spec.services[0].env[0].name",
            "are set by the operator in lane containers (the lane's cell, Redis, its password and write acknowledgements, policies, admin token and the state API's address); remove this variable; got 'CELLSTACK_REDIS_URL'",
        ),
        invalid(
            "env overriding the write acknowledgements the operator sets",
            "Cell",
            json!({"services": [{"name": "api", "image": "x/a:1", "env": [{"name": "CELLSTACK_REDIS_WRITE_ACKS", "value": "0"}]}]}),
            "spec.services[0].env[0].name",
            "remove this variable; got 'CELLSTACK_REDIS_WRITE_ACKS'",
        ),
        invalid(
            "size without a unit",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Persistent", "size": "1"}}}),
            "spec.datastore.managed.size",
            "size must be a storage quantity of at least 1Mi, such as '1Gi' or '512Mi' (a plain number counts bytes; no sign, no space); got '1'",
        ),
        invalid(
            "size as a number of bytes below 1Mi",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Persistent", "size": 1000}}}),
            "spec.datastore.managed.size",
            "size must be a storage quantity of at least 1Mi",
        ),
        invalid(
            "negative size",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Persistent", "size": "-1Gi"}}}),
            "spec.datastore.managed.size",
            "size must be a storage quantity of at least 1Mi",
        ),
        invalid(
            "size with a space before the unit",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Persistent", "size": "1 Gi"}}}),
            "spec.datastore.managed.size",
            "got '1 Gi'",
        ),
        invalid(
            "size in an unknown unit",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Persistent", "size": "1GB"}}}),
            "spec.datastore.managed.size",
            "size must be a storage quantity of at least 1Mi",
        ),
        // TenantAssignment
        invalid(
            "name differs from tenantId",
            "TenantAssignment",
            json!({"metadata": {"name": "other-name"}}),
            "metadata.name",
            "metadata.name must equal spec.tenantId",
        ),
        invalid(
            "tenant id with capitals",
            "TenantAssignment",
            json!({"metadata": {"name": "acme"}, "spec": {"tenantId": "ACME"}}),
            "spec.tenantId",
            "a tenant id is 1-40 characters of lowercase letters",
        ),
        invalid(
            "tenant id ending with a hyphen",
            "TenantAssignment",
            json!({"metadata": {"name": "acme-"}, "spec": {"tenantId": "acme-"}}),
            "spec.tenantId",
            "starting and ending with a letter or digit",
        ),
        invalid(
            "tenant id too long",
            "TenantAssignment",
            json!({"metadata": {"name": "a".repeat(41)}, "spec": {"tenantId": "a".repeat(41)}}),
            "spec.tenantId",
            "Too long",
        ),
        invalid(
            "tier with an underscore",
            "TenantAssignment",
            json!({"tier": "gold_plus"}),
            "spec.tier",
            "tier must be lowercase letters",
        ),
        invalid(
            "a data-loss acceptance that is not a marker",
            "TenantAssignment",
            json!({"acceptDataLossOf": "0123456789ABCDEF"}),
            "spec.acceptDataLossOf",
            "acceptDataLossOf must be the data marker the DataLost condition names",
        ),
        invalid(
            "a data-loss acceptance too short to be a marker",
            "TenantAssignment",
            json!({"acceptDataLossOf": "0123"}),
            "spec.acceptDataLossOf",
            "at least 16",
        ),
        invalid(
            "both a cell and automatic placement",
            "TenantAssignment",
            json!({"cell": "alpha"}),
            "spec",
            "set exactly one of spec.cell",
        ),
        invalid(
            "neither a cell nor automatic placement",
            "TenantAssignment",
            json!({"automatic": null}),
            "spec",
            "set exactly one of spec.cell",
        ),
        invalid(
            "cell name with a dot",
            "TenantAssignment",
            json!({"automatic": null, "cell": "a.b"}),
            "spec.cell",
            "cell must be the name of a Cell",
        ),
        invalid(
            "zone with a space",
            "TenantAssignment",
            json!({"automatic": {"zones": ["zone a"]}}),
            "spec.automatic.zones",
            "each zone must be",
        ),
        invalid(
            "region with a slash",
            "TenantAssignment",
            json!({"automatic": {"regions": ["eu/west"]}}),
            "spec.automatic.regions",
            "each region must be",
        ),
        // RateLimitPolicy
        invalid(
            "selector selecting nothing",
            "RateLimitPolicy",
            json!({"selector": {"tiers": null}}),
            "spec.selector",
            "the selector selects no tenant",
        ),
        invalid(
            "allTenants with tiers",
            "RateLimitPolicy",
            json!({"selector": {"allTenants": true}}),
            "spec.selector.allTenants",
            "allTenants: true selects every tenant",
        ),
        invalid(
            "bad tenant id in selector",
            "RateLimitPolicy",
            json!({"selector": {"tenantIds": ["Acme"]}}),
            "spec.selector.tenantIds",
            "every entry of tenantIds must be a tenant id",
        ),
        invalid(
            "bad tier in selector",
            "RateLimitPolicy",
            json!({"selector": {"tiers": ["Gold"]}}),
            "spec.selector.tiers",
            "every tier must be",
        ),
        invalid(
            "no limits",
            "RateLimitPolicy",
            json!({"limits": []}),
            "spec.limits",
            "should have at least 1 items",
        ),
        invalid(
            "duplicate limit names",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 1}, {"name": "a", "requests": 2}]}),
            "spec.limits",
            "limit names must be unique",
        ),
        invalid(
            "limit name with capitals",
            "RateLimitPolicy",
            json!({"limits": [{"name": "Writes", "requests": 1}]}),
            "spec.limits[0].name",
            "limit name must be lowercase",
        ),
        invalid(
            "zero requests",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 0}]}),
            "spec.limits[0].requests",
            "should be greater than or equal to 1",
        ),
        invalid(
            "period longer than a day",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 1, "periodSeconds": 86401}]}),
            "spec.limits[0].periodSeconds",
            "should be less than or equal to 86400",
        ),
        invalid(
            "burst below requests",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 10, "burst": 5}]}),
            "spec.limits[0].burst",
            "burst must be at least requests",
        ),
        invalid(
            "burst on a sliding window",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 10, "burst": 20, "algorithm": "SlidingWindow"}]}),
            "spec.limits[0].burst",
            "burst applies to the TokenBucket algorithm only",
        ),
        invalid(
            "unknown algorithm",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 1, "algorithm": "LeakyBucket"}]}),
            "spec.limits[0].algorithm",
            "supported values: \"TokenBucket\", \"SlidingWindow\"",
        ),
        invalid(
            "unknown method",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 1, "match": {"methods": ["FETCH"]}}]}),
            "spec.limits[0].match.methods[0]",
            "supported values",
        ),
        invalid(
            "path prefix without a slash",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 1, "match": {"pathPrefix": "v1"}}]}),
            "spec.limits[0].match.pathPrefix",
            "pathPrefix must be a URL path as requests carry it",
        ),
        invalid(
            "path prefix with a tab",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 1, "match": {"pathPrefix": "/v1/\titems"}}]}),
            "spec.limits[0].match.pathPrefix",
            "got a value with a control character",
        ),
        invalid(
            "path prefix with a line break",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 1, "match": {"pathPrefix": "/v1\r\n"}}]}),
            "spec.limits[0].match.pathPrefix",
            "got a value with a control character",
        ),
        invalid(
            "path prefix with a DEL character",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 1, "match": {"pathPrefix": "/v1\u{7f}"}}]}),
            "spec.limits[0].match.pathPrefix",
            "got a value with a control character",
        ),
        invalid(
            "path prefix with a space",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 1, "match": {"pathPrefix": "/my items"}}]}),
            "spec.limits[0].match.pathPrefix",
            "got '/my items'",
        ),
        invalid(
            "path prefix with a query",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 1, "match": {"pathPrefix": "/v1?debug=1"}}]}),
            "spec.limits[0].match.pathPrefix",
            "got '/v1?debug=1'",
        ),
        invalid(
            "path prefix with a raw non-ASCII character",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 1, "match": {"pathPrefix": "/caf\u{e9}"}}]}),
            "spec.limits[0].match.pathPrefix",
            "pathPrefix must be a URL path as requests carry it",
        ),
        invalid(
            "label key with a space",
            "RateLimitPolicy",
            json!({"selector": {"matchLabels": {"team name": "payments"}}}),
            "spec.selector.matchLabels",
            "every matchLabels key must be a label key",
        ),
        invalid(
            "label key with an empty name",
            "RateLimitPolicy",
            json!({"selector": {"matchLabels": {"example.com/": "payments"}}}),
            "spec.selector.matchLabels",
            "got 'example.com/'",
        ),
        invalid(
            "label key whose name is longer than 63",
            "RateLimitPolicy",
            json!({"selector": {"matchLabels": {"x".repeat(64): "payments"}}}),
            "spec.selector.matchLabels",
            "every matchLabels key must be a label key",
        ),
        invalid(
            "label key whose prefix is longer than 253",
            "RateLimitPolicy",
            json!({"selector": {"matchLabels": {format!("{}/team", "a".repeat(254)): "payments"}}}),
            "spec.selector.matchLabels",
            "every matchLabels key must be a label key",
        ),
        invalid(
            "label key with a line break",
            "RateLimitPolicy",
            json!({"selector": {"matchLabels": {"team\n": "payments"}}}),
            "spec.selector.matchLabels",
            "got a value with a control character",
        ),
        invalid(
            "label value with a slash",
            "RateLimitPolicy",
            json!({"selector": {"matchLabels": {"team": "pay/ments"}}}),
            "spec.selector.matchLabels",
            "a matchLabels value must be a label value: empty, or letters, digits, '-', '_' and '.', starting and ending with a letter or digit, such as 'standard'; got 'pay/ments'",
        ),
        invalid(
            "label value longer than 63",
            "RateLimitPolicy",
            json!({"selector": {"matchLabels": {"team": "x".repeat(64)}}}),
            "spec.selector.matchLabels",
            "may not be more than 63",
        ),
        invalid(
            "unknown fail mode",
            "RateLimitPolicy",
            json!({"failMode": "Maybe"}),
            "spec.failMode",
            "supported values: \"Open\", \"Closed\"",
        ),
        invalid(
            "priority out of range",
            "RateLimitPolicy",
            json!({"priority": 5000}),
            "spec.priority",
            "should be less than or equal to 1000",
        ),
        // ShuffleShardPool
        invalid(
            "shard size above lanes",
            "ShuffleShardPool",
            json!({"shardSize": 9}),
            "spec.shardSize",
            "shardSize (k) must not exceed lanes (N)",
        ),
        invalid(
            "max overlap equal to shard size",
            "ShuffleShardPool",
            json!({"maxOverlap": 2}),
            "spec.maxOverlap",
            "maxOverlap must be below shardSize",
        ),
        invalid(
            "cell selector selecting nothing",
            "ShuffleShardPool",
            json!({"cells": {"names": null}}),
            "spec.cells",
            "the cell selector selects no cell",
        ),
        invalid(
            "bad cell name in selector",
            "ShuffleShardPool",
            json!({"cells": {"names": ["Alpha"]}}),
            "spec.cells.names",
            "every entry of names must be a Cell name",
        ),
        invalid(
            "zero lanes",
            "ShuffleShardPool",
            json!({"lanes": 0, "shardSize": 0}),
            "spec.lanes",
            "should be greater than or equal to 1",
        ),
        invalid(
            "65 lanes",
            "ShuffleShardPool",
            json!({"lanes": 65}),
            "spec.lanes",
            "should be less than or equal to 64",
        ),
        invalid(
            "seed beyond 32 bits",
            "ShuffleShardPool",
            json!({"seed": 4_294_967_296_u64}),
            "spec.seed",
            "should be less than or equal to 4294967295",
        ),
        invalid(
            "cell label key with two slashes",
            "ShuffleShardPool",
            json!({"cells": {"matchLabels": {"a/b/c": "x"}}}),
            "spec.cells.matchLabels",
            "got 'a/b/c'",
        ),
        invalid(
            "cell label value ending with a dot",
            "ShuffleShardPool",
            json!({"cells": {"matchLabels": {"cellstack.dev/pool": "standard."}}}),
            "spec.cells.matchLabels",
            "a matchLabels value must be a label value",
        ),
        // CellRollout
        invalid(
            "rollout selecting nothing",
            "CellRollout",
            json!({"cells": {"matchLabels": null}}),
            "spec.cells",
            "the cell selector selects no cell",
        ),
        invalid(
            "version that is no label value",
            "CellRollout",
            json!({"version": "v1 final"}),
            "spec.version",
            "version must be a Kubernetes label value",
        ),
        invalid(
            "two services of one name",
            "CellRollout",
            json!({"services": [
                {"name": "api", "image": "example.org/api:1.5.0"},
                {"name": "api", "image": "example.org/api:1.5.1"},
            ]}),
            "spec.services",
            "service names must be unique",
        ),
        invalid(
            "image without a tag",
            "CellRollout",
            json!({"services": [{"name": "api", "image": "example.org/api"}]}),
            "spec.services[0].image",
            "image must name an explicit tag or digest",
        ),
        invalid(
            "image with an empty tag",
            "CellRollout",
            json!({"services": [{"name": "api", "image": "example.org/api:"}]}),
            "spec.services[0].image",
            "image must be a container image reference",
        ),
        invalid(
            "two services on one port",
            "CellRollout",
            json!({"services": [{"name": "api", "image": "x/a:1", "port": 8081}, {"name": "sidecar", "image": "x/b:1", "port": 8081}]}),
            "spec.services",
            "service ports must be unique within a cell",
        ),
        invalid(
            "label value with a space",
            "CellRollout",
            json!({"cells": {"matchLabels": {"cellstack.dev/pool": "standard pool"}}}),
            "spec.cells.matchLabels",
            "got 'standard pool'",
        ),
        invalid(
            "bake too short to judge",
            "CellRollout",
            json!({"strategy": {"bakeSeconds": 1}}),
            "spec.strategy.bakeSeconds",
            "should be greater than or equal to 5",
        ),
        invalid(
            "waves that do not grow",
            "CellRollout",
            json!({"strategy": {"waveGrowth": 0}}),
            "spec.strategy.waveGrowth",
            "should be greater than or equal to 1",
        ),
        invalid(
            "error share above 1",
            "CellRollout",
            json!({"gate": {"maxErrorRateIncrease": 2.0}}),
            "spec.gate.maxErrorRateIncrease",
            "should be less than or equal to 1",
        ),
        invalid(
            "unknown action",
            "CellRollout",
            json!({"action": "Rollback"}),
            "spec.action",
            "supported values",
        ),
        // MemberCluster
        invalid(
            "member cluster name of 41 characters",
            "MemberCluster",
            json!({"metadata": {"name": "a".repeat(41)}}),
            "metadata.name",
            "member cluster name must be at most 40",
        ),
        invalid(
            "member cluster name with a dot",
            "MemberCluster",
            json!({"metadata": {"name": "east.example"}}),
            "metadata.name",
            "member cluster name must be at most 40",
        ),
        invalid(
            "member system namespace in capitals",
            "MemberCluster",
            json!({"systemNamespace": "Cellstack"}),
            "spec.systemNamespace",
            "systemNamespace must be a namespace name",
        ),
        invalid(
            "member lane OTLP endpoint without a scheme",
            "MemberCluster",
            json!({"laneOtlpEndpoint": "otel:4317"}),
            "spec.laneOtlpEndpoint",
            "laneOtlpEndpoint must be an http:// or https:// URL",
        ),
        invalid(
            "member node address type not one of the two",
            "MemberCluster",
            json!({"network": {"nodeAddressType": "Hostname"}}),
            "spec.network.nodeAddressType",
            "supported values: \"InternalIP\", \"ExternalIP\"",
        ),
        invalid(
            "no kubeconfig Secret",
            "MemberCluster",
            json!({"kubeconfigSecretRef": null}),
            "spec.kubeconfigSecretRef",
            "Required value",
        ),
        invalid(
            "kubeconfig Secret name with an uppercase letter",
            "MemberCluster",
            json!({"kubeconfigSecretRef": {"name": "Member-East"}}),
            "spec.kubeconfigSecretRef.name",
            "name must be a valid Secret name",
        ),
        invalid(
            "kubeconfig Secret name too long",
            "MemberCluster",
            json!({"kubeconfigSecretRef": {"name": "a".repeat(254)}}),
            "spec.kubeconfigSecretRef.name",
            "may not be more than 253",
        ),
        invalid(
            "kubeconfig key with a slash",
            "MemberCluster",
            json!({"kubeconfigSecretRef": {"key": "kube/config"}}),
            "spec.kubeconfigSecretRef.key",
            "key must be a valid Secret key",
        ),
        invalid(
            "member region with a space",
            "MemberCluster",
            json!({"region": "us east"}),
            "spec.region",
            "region must be a Kubernetes label value",
        ),
    ]
}

fn build(case: &Invalid, name: &str) -> Value {
    let mut obj = valid(case.kind, name);
    match case.change.as_object() {
        Some(m) if m.contains_key("metadata") || m.contains_key("spec") => {
            merge(&mut obj, &case.change)
        }
        _ => merge(&mut obj["spec"], &case.change),
    }
    obj
}

/// Asserts `result` is a 422 naming `field` and containing `message`.
fn assert_refused<T: std::fmt::Debug>(
    why: &str,
    result: Result<T, kube::Error>,
    field: &str,
    message: &str,
) -> Result<(), String> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 422 => {
            let text = &status.message;
            if !text.contains(field) || !text.contains(message) {
                return Err(format!(
                    "{why}: refused, but the message does not name {field:?} with {message:?}:\n  {text}"
                ));
            }
            Ok(())
        }
        other => Err(format!(
            "{why}: expected a 422 naming {field:?}, got {other:?}"
        )),
    }
}

#[tokio::test]
async fn generated_crds_install_and_are_served() -> anyhow::Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    for kind in [
        "Cell",
        "TenantAssignment",
        "RateLimitPolicy",
        "ShuffleShardPool",
        "CellRollout",
        "MemberCluster",
    ] {
        let list = dynamic_api(&client, kind)?.list(&Default::default()).await;
        assert!(list.is_ok(), "{kind} is not served: {list:?}");
    }
    Ok(())
}

#[tokio::test]
async fn every_example_is_accepted() -> anyhow::Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let mut docs = example_documents()?;
    assert!(
        docs.len() >= 30,
        "examples/ should hold the demo's cells, pool, policies and 30 tenants"
    );
    // The rollout the docs walk through (not applied by the demo).
    let rollouts = documents_in("examples/rollouts")?;
    assert!(
        !rollouts.is_empty(),
        "examples/rollouts/ should hold a CellRollout"
    );
    docs.extend(rollouts);
    // The Cell running the Go example (docs/services.md; the demo's `--service go-orders`).
    let orders = documents_in("examples/go-orders")?;
    assert!(!orders.is_empty(), "examples/go-orders/ should hold a Cell");
    docs.extend(orders);
    // A member cluster (docs/member-clusters.md; not applied by the demo, which has one cluster).
    let members = documents_in("examples/member-clusters")?;
    assert!(
        members.iter().any(|(_, d)| d["kind"] == "MemberCluster"),
        "examples/member-clusters/ should hold a MemberCluster"
    );
    docs.extend(
        members
            .into_iter()
            .filter(|(_, d)| d["kind"] == "MemberCluster"),
    );
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    for (file, doc) in docs {
        let kind = doc["kind"]
            .as_str()
            .with_context(|| format!("{file}: document without kind"))?;
        let obj: DynamicObject = serde_json::from_value(doc.clone())?;
        let created = dynamic_api(&client, kind)?.create(&dry_run, &obj).await;
        assert!(
            created.is_ok(),
            "{file}: {kind} {:?} refused: {created:?}",
            obj.metadata.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn valid_fixtures_are_accepted() -> anyhow::Result<()> {
    // The invalid cases below each break one rule of these; they must be valid to begin with.
    let client = client().await?;
    ensure_crds(&client).await?;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    for kind in [
        "Cell",
        "TenantAssignment",
        "RateLimitPolicy",
        "ShuffleShardPool",
        "CellRollout",
        "MemberCluster",
    ] {
        let obj: DynamicObject = serde_json::from_value(valid(kind, &unique_name("valid")))?;
        let created = dynamic_api(&client, kind)?.create(&dry_run, &obj).await;
        assert!(created.is_ok(), "valid {kind} refused: {created:?}");
    }
    Ok(())
}

#[tokio::test]
async fn invalid_objects_are_refused_naming_the_field() -> anyhow::Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let cases = invalid_objects();
    assert!(cases.len() >= 25);
    let mut failures = vec![];
    for case in &cases {
        let name = unique_name("invalid");
        let obj: DynamicObject = serde_json::from_value(build(case, &name))?;
        let result = dynamic_api(&client, case.kind)?
            .create(&dry_run, &obj)
            .await;
        if let Err(e) = assert_refused(case.why, result, case.field, case.message) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid objects were not refused as expected:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

/// Values at the edges of the rules that the operator can use: a rule must not refuse them.
#[tokio::test]
async fn usable_values_at_the_edges_of_the_rules_are_accepted() -> anyhow::Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let cases = [
        (
            "image with a registry port, a nested path and a digest",
            "Cell",
            json!({"services": [{"name": "api", "image": format!("registry.example:5000/team/api-server@{digest}")}]}),
        ),
        (
            "image with a tag and a digest",
            "Cell",
            json!({"services": [{"name": "api", "image": format!("example.org/api:1.0_rc-1@{digest}")}]}),
        ),
        (
            "image on localhost with a tag",
            "Cell",
            json!({"services": [{"name": "api", "image": "localhost:5000/api:v1"}]}),
        ),
        (
            "services on distinct ports and routes, and an env variable of the runtime's own",
            "Cell",
            json!({"services": [
                {"name": "api", "image": "x/a:1", "env": [{"name": "CELLSTACK_LOG_JSON", "value": "false"}]},
                {"name": "sidecar", "image": "x/b:1", "port": 8082, "routes": ["/reports", "/exports/"],
                 "healthPath": "/healthz", "timeoutSeconds": 300,
                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}},
            ]}),
        ),
        (
            "a fractional size",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Persistent", "size": "1.5Gi"}}}),
        ),
        (
            "size of exactly 1Mi",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Persistent", "size": "1Mi"}}}),
        ),
        (
            "size as a number of bytes",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Persistent", "size": 1_073_741_824_u64}}}),
        ),
        (
            "the most datastore replicas",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Persistent", "replicas": 7}}}),
        ),
        (
            "an ephemeral datastore naming its one replica",
            "Cell",
            json!({"datastore": {"managed": {"storage": "Ephemeral", "replicas": 1}}}),
        ),
        (
            "path prefix with escapes and sub-delimiters",
            "RateLimitPolicy",
            json!({"limits": [{"name": "a", "requests": 1, "match": {"pathPrefix": "/v1/caf%C3%A9/~a:b@c;d=e,f+g!$&'()*"}}]}),
        ),
        (
            "label keys with and without a prefix, and an empty value",
            "RateLimitPolicy",
            json!({"selector": {"matchLabels": {
                "cellstack.dev/team": "",
                "tier_2.x": "gold_1.x",
                format!("{}/{}", "a".repeat(253), "b".repeat(63)): "x".repeat(63),
            }}}),
        ),
        (
            "the largest seed",
            "ShuffleShardPool",
            json!({"seed": 4_294_967_295_u64, "cells": {"matchLabels": {"example.com/pool": "standard"}}}),
        ),
        (
            "a rollout to an image pinned by digest",
            "CellRollout",
            json!({"services": [{"name": "api", "image": format!("example.org/api@{digest}")}]}),
        ),
    ];
    let mut failures = vec![];
    for (why, kind, change) in cases {
        let case = invalid(why, kind, change, "", "");
        let obj: DynamicObject = serde_json::from_value(build(&case, &unique_name("edge")))?;
        if let Err(e) = dynamic_api(&client, kind)?.create(&dry_run, &obj).await {
            failures.push(format!("{why}: refused: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "usable values were refused:\n{}",
        failures.join("\n")
    );
    Ok(())
}

/// Status counters are `u32` in the operator: a status the API server stores must be one the
/// operator can read back.
#[tokio::test]
async fn status_counters_beyond_32_bits_are_refused() -> anyhow::Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let dry_run = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let mut failures = vec![];
    for (kind, prefix, status, field) in [
        (
            "Cell",
            "cell",
            json!({"tenantCount": 4_294_967_296_u64}),
            "status.tenantCount",
        ),
        (
            "TenantAssignment",
            "tenant",
            json!({"shardVariant": 4_294_967_296_u64}),
            "status.shardVariant",
        ),
        (
            "ShuffleShardPool",
            "pool",
            json!({"cells": [{"name": "alpha", "tenants": 1, "lanesHealthy": 1, "tenantsPerLane": [4_294_967_296_u64]}]}),
            "status.cells[0].tenantsPerLane[0]",
        ),
        (
            "CellRollout",
            "rollout",
            json!({"waves": 4_294_967_296_u64}),
            "status.waves",
        ),
        (
            "RateLimitPolicy",
            "policy",
            json!({"tenantsMatched": 4_294_967_296_u64}),
            "status.tenantsMatched",
        ),
    ] {
        let api = dynamic_api(&client, kind)?;
        let name = unique_name(prefix);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(valid(kind, &name))?,
        )
        .await?;
        let result = api
            .patch_status(&name, &dry_run, &Patch::Merge(json!({"status": status})))
            .await;
        if let Err(e) = assert_refused(
            kind,
            result,
            field,
            "should be less than or equal to 4294967295",
        ) {
            failures.push(e);
        }
        api.delete(&name, &Default::default()).await?;
    }
    assert!(
        failures.is_empty(),
        "status counters beyond u32 were stored:\n{}",
        failures.join("\n")
    );
    Ok(())
}

/// Rules that compare with the stored object: immutable fields, one-way switches, monotonic
/// status. Each needs a real object first.
#[tokio::test]
async fn transition_rules_are_enforced_on_update() -> anyhow::Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let dry_run = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let mut failures = vec![];

    let mut check = async |kind: &str,
                           base: Value,
                           change: Value,
                           field: &str,
                           message: &str,
                           why: &str|
           -> anyhow::Result<()> {
        let api = dynamic_api(&client, kind)?;
        let name = base["metadata"]["name"]
            .as_str()
            .context("fixture has a name")?
            .to_owned();
        api.create(&PostParams::default(), &serde_json::from_value(base)?)
            .await?;
        let result = api.patch(&name, &dry_run, &Patch::Merge(&change)).await;
        if let Err(e) = assert_refused(why, result, field, message) {
            failures.push(e);
        }
        api.delete(&name, &Default::default()).await?;
        Ok(())
    };

    let cell = valid("Cell", &unique_name("cell"));
    check("Cell", cell.clone(), json!({"spec": {"datastore": {"managed": null, "external": {"urlSecretRef": {"name": "redis"}}}}}),
        "spec.datastore", "cannot switch between managed and external", "switching the datastore").await?;
    check(
        "Cell",
        valid("Cell", &unique_name("cell")),
        json!({"spec": {"datastore": {"managed": {"storage": "Persistent"}}}}),
        "spec.datastore.managed.storage",
        "storage cannot change in place",
        "changing storage",
    )
    .await?;
    let mut persistent = valid("Cell", &unique_name("cell"));
    merge(
        &mut persistent,
        &json!({"spec": {"datastore": {"managed": {"storage": "Persistent"}}}}),
    );
    check(
        "Cell",
        persistent,
        json!({"spec": {"datastore": {"managed": {"replicas": 5}}}}),
        "spec.datastore.managed.replicas",
        "replicas cannot change in place",
        "changing the datastore's replicas",
    )
    .await?;
    // A cell's cluster: neither changed, nor added, nor removed.
    let mut in_east = valid("Cell", &unique_name("cell"));
    merge(&mut in_east, &json!({"spec": {"cluster": "east"}}));
    for (change, why) in [
        (
            json!({"spec": {"cluster": "west"}}),
            "changing the cell's cluster",
        ),
        (
            json!({"spec": {"cluster": null}}),
            "removing the cell's cluster",
        ),
    ] {
        check(
            "Cell",
            in_east.clone(),
            change,
            "spec.cluster",
            "cannot change: a cell does not move between clusters",
            why,
        )
        .await?;
    }
    check(
        "Cell",
        valid("Cell", &unique_name("cell")),
        json!({"spec": {"cluster": "east"}}),
        "spec.cluster",
        "cannot change: a cell does not move between clusters",
        "adding a cluster to a cell",
    )
    .await?;
    let tenant = unique_name("tenant");
    check(
        "TenantAssignment",
        valid("TenantAssignment", &tenant),
        json!({"spec": {"tenantId": "someone-else"}}),
        "spec.tenantId",
        "tenantId cannot change",
        "changing the tenant id",
    )
    .await?;
    check(
        "ShuffleShardPool",
        valid("ShuffleShardPool", &unique_name("pool")),
        json!({"spec": {"seed": 42}}),
        "spec.seed",
        "seed cannot change",
        "changing the seed",
    )
    .await?;

    // Naming the default a cell already runs changes nothing: accepted.
    let api = dynamic_api(&client, "Cell")?;
    let name = unique_name("cell");
    let mut base = valid("Cell", &name);
    merge(
        &mut base,
        &json!({"spec": {"datastore": {"managed": {"storage": "Persistent"}}}}),
    );
    api.create(&PostParams::default(), &serde_json::from_value(base)?)
        .await?;
    let named = api
        .patch(
            &name,
            &dry_run,
            &Patch::Merge(json!({"spec": {"datastore": {"managed": {"replicas": 3}}}})),
        )
        .await;
    if let Err(e) = named {
        failures.push(format!(
            "naming the default replicas (3) of a Persistent cell was refused: {e}"
        ));
    }
    api.delete(&name, &Default::default()).await?;

    // The epoch in status never goes down.
    let name = unique_name("epoch");
    let api = dynamic_api(&client, "TenantAssignment")?;
    api.create(
        &PostParams::default(),
        &serde_json::from_value(valid("TenantAssignment", &name))?,
    )
    .await?;
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"epoch": 5}})),
    )
    .await?;
    let lowered = api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"epoch": 3}})),
        )
        .await;
    if let Err(e) = assert_refused(
        "lowering the epoch",
        lowered,
        "status.epoch",
        "epoch never decreases",
    ) {
        failures.push(e);
    }
    let raised = api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"epoch": 6}})),
        )
        .await;
    if raised.is_err() {
        failures.push(format!("raising the epoch was refused: {raised:?}"));
    }
    api.delete(&name, &Default::default()).await?;

    assert!(
        failures.is_empty(),
        "transition rules not enforced:\n{}",
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn defaults_are_applied_by_the_api_server() -> anyhow::Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let name = unique_name("defaults");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource("Cell")?);
    let minimal = json!({"apiVersion": "cellstack.dev/v1alpha1", "kind": "Cell", "metadata": {"name": name}, "spec": {}});
    let created = api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &serde_json::from_value(minimal)?,
        )
        .await?;
    let spec = &created.data["spec"];
    assert_eq!(spec["lanes"], 2, "{spec}");
    assert_eq!(
        spec["datastore"]["managed"]["storage"], "Persistent",
        "{spec}"
    );
    assert_eq!(spec["capacity"]["maxTenants"], 1000, "{spec}");
    assert_eq!(spec["cordoned"], false, "{spec}");

    let member = json!({"apiVersion": "cellstack.dev/v1alpha1", "kind": "MemberCluster", "metadata": {"name": unique_name("defaults")}, "spec": {"kubeconfigSecretRef": {"name": "member-east"}}});
    let created = dynamic_api(&client, "MemberCluster")?
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &serde_json::from_value(member)?,
        )
        .await?;
    assert_eq!(
        created.data["spec"]["kubeconfigSecretRef"]["key"], "value",
        "{}",
        created.data["spec"]
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_shows_the_field_docs() -> anyhow::Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    for (path, expected) in [
        (
            "cells.spec.lanes",
            "Lanes (replicas with stable identities)",
        ),
        ("tenantassignments.spec.tenantId", "The tenant's id"),
        ("ratelimitpolicies.spec.failMode", "admits requests"),
        (
            "shuffleshardpools.spec.shardSize",
            "lanes serving each tenant",
        ),
        ("cells", "An independent cell stack"),
        (
            "memberclusters.spec.kubeconfigSecretRef",
            "The Secret holding the member's kubeconfig",
        ),
    ] {
        // The API server publishes a new CRD's OpenAPI a moment after it is established; retry
        // until it does, within the harness deadline.
        let deadline = std::time::Instant::now() + cellstack_testkit::WAIT;
        loop {
            let out = kubectl()
                .args(["explain", path])
                .output()
                .context("running kubectl")?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() && text.contains(expected) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kubectl explain {path} lacks {expected:?}:\n{text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    Ok(())
}
