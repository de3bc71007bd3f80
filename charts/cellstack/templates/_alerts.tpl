{{/*
The alert and recording rules, as a Prometheus rules file (`groups:`). Rendered into the
`<fullname>-prometheus-rules` ConfigMap (`monitoring.rules.enabled`) and, for prometheus-operator,
a PrometheusRule (`monitoring.prometheusRule.enabled`). Every alert has a runbook entry in
docs/alerts.md and cases in e2e/alerts/cellstack.rules.test.yaml (`promtool test rules`).
`monitoring.alerts.for`, when set, replaces every alert's own `for:` (tests make alerts fire
within seconds through it; keep it empty in production).
*/}}
{{- define "cellstack.alertFor" -}}
{{- $root := index . 0 -}}
{{- default (index . 1) $root.Values.monitoring.alerts.for -}}
{{- end -}}

{{- define "cellstack.alertRules" -}}
{{- $runbook := .Values.monitoring.alerts.runbookBaseUrl -}}
groups:
  - name: cellstack.recording
    rules:
      - record: cellstack:router_requests:rate5m
        expr: sum by (namespace, cell, code) (rate(cellstack_router_requests_total[5m]))
      - record: cellstack:router_errors:ratio5m
        expr: |
          sum by (namespace, cell) (rate(cellstack_router_requests_total{code=~"5.."}[5m]))
            / sum by (namespace, cell) (rate(cellstack_router_requests_total[5m]))
      - record: cellstack:router_request_duration_seconds:p99_5m
        expr: histogram_quantile(0.99, sum by (namespace, le) (rate(cellstack_router_request_duration_seconds_bucket[5m])))
      - record: cellstack:cell_requests:rate5m
        expr: sum by (namespace, code) (rate(cellstack_cell_requests_total[5m]))
      - record: cellstack:cell_rate_limited:rate5m
        expr: sum by (namespace) (rate(cellstack_cell_rate_limited_total[5m]))
  - name: cellstack.alerts
    rules:
      - alert: CellstackRouterTableStale
        expr: max by (namespace, pod) (cellstack_router_table_stale) == 1
        for: {{ include "cellstack.alertFor" (list $ "2m") }}
        labels:
          severity: warning
        annotations:
          summary: Router {{ "{{ $labels.pod }}" }} serves a routing table it has not confirmed within its bound.
          runbook_url: {{ $runbook }}#cellstackroutertablestale
      - alert: CellstackCellPolicyNotAcknowledged
        expr: max by (namespace, cell) (cellstack_operator_policy_ack_age_seconds) > 300
        for: {{ include "cellstack.alertFor" (list $ "5m") }}
        labels:
          severity: warning
        annotations:
          summary: Cell {{ "{{ $labels.cell }}" }} has not enforced its current rate-limit policies for over 5 minutes.
          runbook_url: {{ $runbook }}#cellstackcellpolicynotacknowledged
      - alert: CellstackCellNotReady
        expr: max by (namespace, cell) (cellstack_operator_cell_ready) == 0
        for: {{ include "cellstack.alertFor" (list $ "5m") }}
        labels:
          severity: critical
        annotations:
          summary: Cell {{ "{{ $labels.cell }}" }} is not Ready.
          runbook_url: {{ $runbook }}#cellstackcellnotready
      - alert: CellstackCellDataLost
        expr: max by (namespace, cell) (cellstack_operator_cell_data_lost_tenants) > 0
        labels:
          severity: critical
        annotations:
          summary: Cell {{ "{{ $labels.cell }}" }}'s datastore lost the data of {{ "{{ $value }}" }} tenant(s).
          runbook_url: {{ $runbook }}#cellstackcelldatalost
      - alert: CellstackCellErrorRateHigh
        expr: |
          cellstack:router_errors:ratio5m{cell!=""} > 0.05
            and on (namespace, cell) sum by (namespace, cell) (cellstack:router_requests:rate5m) > 1
        for: {{ include "cellstack.alertFor" (list $ "5m") }}
        labels:
          severity: critical
        annotations:
          summary: Over 5% of the requests routed to cell {{ "{{ $labels.cell }}" }} fail with a 5xx.
          runbook_url: {{ $runbook }}#cellstackcellerrorratehigh
      - alert: CellstackCellRateLimitedHigh
        expr: |
          sum by (namespace, cell) (cellstack:router_requests:rate5m{cell!="", code="429"})
            / sum by (namespace, cell) (cellstack:router_requests:rate5m{cell!=""}) > 0.25
            and on (namespace, cell) sum by (namespace, cell) (cellstack:router_requests:rate5m) > 1
        for: {{ include "cellstack.alertFor" (list $ "10m") }}
        labels:
          severity: warning
        annotations:
          summary: Cell {{ "{{ $labels.cell }}" }} refuses over 25% of its requests for its tenants' rate limits.
          runbook_url: {{ $runbook }}#cellstackcellratelimitedhigh
      - alert: CellstackMoveStuck
        expr: max by (namespace) (cellstack_operator_move_longest_step_seconds) > 600
        for: {{ include "cellstack.alertFor" (list $ "5m") }}
        labels:
          severity: warning
        annotations:
          summary: A tenant move has been in the same step for over 10 minutes.
          runbook_url: {{ $runbook }}#cellstackmovestuck
      - alert: CellstackMoveRolledBack
        expr: sum by (namespace) (increase(cellstack_operator_moves_total{result="rolled_back"}[15m])) > 0
        labels:
          severity: warning
        annotations:
          summary: A tenant move was rolled back in the last 15 minutes; the tenant stays in its old cell.
          runbook_url: {{ $runbook }}#cellstackmoverolledback
      - alert: CellstackRolloutHalted
        expr: max by (namespace, rollout) (cellstack_operator_rollout_halted) == 1
        labels:
          severity: warning
        annotations:
          summary: CellRollout {{ "{{ $labels.rollout }}" }} was halted by its health gate.
          runbook_url: {{ $runbook }}#cellstackrollouthalted
      - alert: CellstackRedisFailover
        expr: max by (namespace) (increase(cellstack_cell_redis_primary_changes_total[10m])) > 0
        labels:
          severity: info
        annotations:
          summary: The datastore of the cell in {{ "{{ $labels.namespace }}" }} failed over to another primary.
          runbook_url: {{ $runbook }}#cellstackredisfailover
      - alert: CellstackCellWritesNotDurable
        expr: sum by (namespace) (rate(cellstack_cell_writes_not_durable_total[5m])) > 0
        for: {{ include "cellstack.alertFor" (list $ "5m") }}
        labels:
          severity: critical
        annotations:
          summary: Writes to the cell in {{ "{{ $labels.namespace }}" }} are refused for lack of replica acknowledgements.
          runbook_url: {{ $runbook }}#cellstackcellwritesnotdurable
      - alert: CellstackOperatorNotLeading
        expr: max by (namespace) (cellstack_operator_leader) == 0
        for: {{ include "cellstack.alertFor" (list $ "2m") }}
        labels:
          severity: critical
        annotations:
          summary: No cellstack operator replica in {{ "{{ $labels.namespace }}" }} leads.
          runbook_url: {{ $runbook }}#cellstackoperatornotleading
      {{- /* A member cluster runs no operator: its absence there means nothing. */}}
      {{- if not (include "cellstack.member" $) }}
      - alert: CellstackOperatorDown
        expr: absent(cellstack_operator_leader)
        for: {{ include "cellstack.alertFor" (list $ "5m") }}
        labels:
          severity: critical
        annotations:
          summary: No cellstack operator is scraped.
          runbook_url: {{ $runbook }}#cellstackoperatordown
      {{- end }}
      - alert: CellstackOperatorReconcileErrors
        expr: |
          sum by (namespace, controller) (rate(cellstack_operator_reconcile_errors_total[5m]))
            / sum by (namespace, controller) (rate(cellstack_operator_reconciles_total[5m])) > 0.1
        for: {{ include "cellstack.alertFor" (list $ "15m") }}
        labels:
          severity: warning
        annotations:
          summary: Over 10% of the {{ "{{ $labels.controller }}" }} controller's reconciles fail.
          runbook_url: {{ $runbook }}#cellstackoperatorreconcileerrors
      - alert: CellstackRoutingTablePublishFailing
        expr: sum by (namespace) (increase(cellstack_operator_routing_table_publish_failures_total[10m])) > 0
        for: {{ include "cellstack.alertFor" (list $ "10m") }}
        labels:
          severity: warning
        annotations:
          summary: The operator in {{ "{{ $labels.namespace }}" }} keeps failing to publish the routing table.
          runbook_url: {{ $runbook }}#cellstackroutingtablepublishfailing
      - alert: CellstackMemberRoutingTableNotMirrored
        expr: sum by (namespace, member_cluster) (increase(cellstack_operator_member_routing_table_publish_failures_total[10m])) > 0
        for: {{ include "cellstack.alertFor" (list $ "10m") }}
        labels:
          severity: warning
        annotations:
          summary: The operator in {{ "{{ $labels.namespace }}" }} keeps failing to mirror the routing table into member cluster {{ "{{ $labels.member_cluster }}" }}.
          runbook_url: {{ $runbook }}#cellstackmemberroutingtablenotmirrored
{{- end -}}
