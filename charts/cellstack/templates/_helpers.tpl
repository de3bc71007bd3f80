{{/*
Prefix of every namespaced object's name: fullnameOverride, else the release name when it already
contains "cellstack", else "<release>-cellstack". At most 54 characters, so "<prefix>-operator"
stays a valid Service name (63).
*/}}
{{- define "cellstack.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Names of the operator's and the router's namespaced objects. */}}
{{- define "cellstack.operator.name" -}}
{{- printf "%s-operator" (include "cellstack.fullname" .) -}}
{{- end -}}
{{/* The ServiceAccount the management release's operator acts as in a member cluster. */}}
{{- define "cellstack.operatorRemote.name" -}}
{{- printf "%s-operator-remote" (include "cellstack.fullname" .) -}}
{{- end -}}

{{/* "true" when this release is a member cluster's (`mode: member`), empty otherwise. */}}
{{- define "cellstack.member" -}}
{{- if eq .Values.mode "member" }}true{{ end -}}
{{- end -}}

{{- define "cellstack.router.name" -}}
{{- printf "%s-router" (include "cellstack.fullname" .) -}}
{{- end -}}

{{/*
Prefix of cluster-scoped names (ClusterRole, ClusterRoleBinding, ValidatingAdmissionPolicy and
its binding): "<namespace>.<fullname>", so two releases never share one. A namespace has no dots,
so the first dot tells namespace and release apart ("a-b" + "c" and "a" + "b-c" would not be).
Names of these kinds may be up to 253 characters.
*/}}
{{- define "cellstack.clusterPrefix" -}}
{{- printf "%s.%s" .Release.Namespace (include "cellstack.fullname" .) -}}
{{- end -}}

{{/* The Lease the operator's replicas elect a leader through. */}}
{{- define "cellstack.operator.leaseName" -}}
{{- default (include "cellstack.operator.name" .) .Values.operator.leaseName -}}
{{- end -}}

{{/* `operator.selector` as a label selector string, keys sorted: k1=v1,k2=v2. */}}
{{- define "cellstack.selector" -}}
{{- $pairs := list -}}
{{- range $key := keys .Values.operator.selector | sortAlpha -}}
{{- $pairs = append $pairs (printf "%s=%s" $key (index $.Values.operator.selector $key | toString)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* An image reference; an empty tag means the chart's appVersion. Call with (list $ .Values.images.x). */}}
{{- define "cellstack.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag | toString) -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "cellstack.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cellstack
{{- end -}}

{{/*
Labels selecting one component's pods. The cells' NetworkPolicy admits pods labelled
`app.kubernetes.io/component: router` (tenant port) and `...: operator` (admin port) from the
operator's namespace, i.e. this release's namespace. Selectors are immutable: never add to these.
Call with (list $ "operator").
*/}}
{{- define "cellstack.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/*
Labels of one component's pods: its selector labels over the extra labels from values (the
selector labels win). Call with (list $ "operator" .Values.operator.podLabels).
*/}}
{{- define "cellstack.podLabels" -}}
{{- $own := include "cellstack.selectorLabels" (list (index . 0) (index . 1)) | fromYaml -}}
{{- merge $own (index . 2 | default dict) | toYaml -}}
{{- end -}}

{{/* Labels of one component's objects. Call with (list $ "operator"). */}}
{{- define "cellstack.componentLabels" -}}
{{ include "cellstack.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/*
The restricted Pod Security Standard, for every pod of the chart: the images run as uid/gid 65532
(e2e/scripts/images.sh), nothing needs privileges or a writable root filesystem.
*/}}
{{- define "cellstack.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "cellstack.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* A soft anti-affinity by hostname for one component. Call with (list $ "router"). */}}
{{- define "cellstack.softAntiAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "cellstack.selectorLabels" . | nindent 12 }}
{{- end -}}

{{/*
The OpenTelemetry SDK variables of a component that exports traces (docs/tracing.md): only when
`tracing.otlpEndpoint` is set; traces are off otherwise.
*/}}
{{- define "cellstack.tracingEnv" -}}
{{- $t := .Values.tracing -}}
{{- if $t.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $t.otlpEndpoint | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $t.sampler | quote }}
{{- if $t.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $t.samplerArg | quote }}
{{- end }}
{{- end }}
{{- end }}
