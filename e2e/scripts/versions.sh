# Pinned versions for everything the scripts build or install. Sourced, not executed.
# Kubernetes 1.34 is the last minor whose kubelet runs on cgroup v1 without an opt-in, and
# k8s-openapi's `v1_34` feature matches it. etcd is the version Kubernetes 1.34's own module
# graph selects (go.etcd.io/etcd/server/v3 in k8s.io/kubernetes' go.mod).
K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.4}"
# Cluster DNS for e2e/cluster, built through the Go module proxy like the rest.
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
CELLSTACK_CACHE="${CELLSTACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cellstack}"
K8S_BIN_DIR="$CELLSTACK_CACHE/kubernetes/$K8S_VERSION/bin"
# Helm for charts/cellstack (lint, template, install), built through the Go module proxy by
# e2e/scripts/build-helm.sh: the newest v3 patch the proxy serves.
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
HELM_BIN="$CELLSTACK_CACHE/helm/$HELM_VERSION/bin/helm"
# Dynamic volume provisioner for e2e/cluster (default StorageClass `local-path`), built through the
# Go module proxy by e2e/scripts/build-local-path-provisioner.sh, as kind ships it. v0.0.30 is the
# release the module proxy serves here (v0.0.29, v0.0.31 and v0.0.32 answer 403).
LOCAL_PATH_PROVISIONER_VERSION="${LOCAL_PATH_PROVISIONER_VERSION:-v0.0.30}"
LOCAL_PATH_PROVISIONER_BIN="$CELLSTACK_CACHE/local-path-provisioner/$LOCAL_PATH_PROVISIONER_VERSION/bin/local-path-provisioner"
# Prometheus and promtool for the demo and the e2e suites, built through the Go module proxy by
# e2e/scripts/build-prometheus.sh with only Kubernetes service discovery compiled in. Debian 12's
# prometheus package has no kubernetes_sd_configs (its build leaves that discovery out). Module
# v0.316.0 is Prometheus v3.16.0.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
PROMETHEUS_BIN="$CELLSTACK_CACHE/prometheus/$PROMETHEUS_VERSION/bin/prometheus"
PROMTOOL_BIN="$CELLSTACK_CACHE/prometheus/$PROMETHEUS_VERSION/bin/promtool"
# prometheus-operator's CRDs (PrometheusRule, ServiceMonitor, PodMonitor), which the chart's
# monitoring objects are validated against (e2e/tests/alerts.rs), taken from the module's zip on
# the Go module proxy by e2e/scripts/fetch-prometheus-operator-crds.sh: v0.85.0 is the newest
# version of the root module the proxy lists here.
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
PROMETHEUS_OPERATOR_CRDS="$CELLSTACK_CACHE/prometheus-operator/$PROMETHEUS_OPERATOR_VERSION/crds"
export GOTOOLCHAIN=local
# The OpenTelemetry Collector the trace tests (and the demo) send spans to, built with the
# collector's builder (ocb) through the Go module proxy by e2e/scripts/build-otelcol.sh from
# e2e/otelcol/builder-config.yaml, which pins every component at this release.
OTELCOL_VERSION="${OTELCOL_VERSION:-v0.161.0}"
OTELCOL_BIN="$CELLSTACK_CACHE/otelcol/$OTELCOL_VERSION/bin/cellstack-otelcol"
# krew (sigs.k8s.io/krew), its validator and installer, for checking the plugin's manifest
# (krew/cellstack.yaml) offline.
KREW_VERSION="${KREW_VERSION:-v0.4.3}"
KREW_BIN_DIR="$CELLSTACK_CACHE/krew/$KREW_VERSION/bin"
# The NetworkPolicy engine of e2e/cluster: kube-router's network policy controller alone
# (iptables + ipset; this kernel has no nftables queue, which kube-network-policies needs), built
# through the Go module proxy by e2e/scripts/build-kube-router.sh. v2.1.0 is the only version the
# proxy serves here; its published advisories concern the service proxy and BGP, which are off.
KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-v2.1.0}"
KUBE_ROUTER_BIN="$CELLSTACK_CACHE/kube-router/$KUBE_ROUTER_VERSION/bin/kube-router"
