{{/* Names and labels shared by the chart's templates. */}}

{{- define "modelfleet.fullname" -}}
{{- printf "%s-modelfleet" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelfleet.operatorName" -}}
{{- printf "%s-operator" (include "modelfleet.fullname" .) -}}
{{- end -}}

{{- define "modelfleet.serviceAccountName" -}}
{{- default (include "modelfleet.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "modelfleet.adminTokenSecret" -}}
{{- default (printf "%s-admin-token" (include "modelfleet.fullname" .)) .Values.adminToken.existingSecret -}}
{{- end -}}

{{- define "modelfleet.selectorLabels" -}}
app.kubernetes.io/name: modelfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "modelfleet.commonLabels" -}}
app.kubernetes.io/name: modelfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "modelfleet.labels" -}}
{{ include "modelfleet.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "modelfleet.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "modelfleet.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtime.image.repository (default .Chart.AppVersion .Values.runtime.image.tag) -}}
{{- end -}}

{{/* The namespaces the operator watches (a list), empty when it watches all of them. */}}
{{- define "modelfleet.watchedNamespaces" -}}
{{- if not .Values.watch.allNamespaces -}}
{{- toYaml (default (list .Release.Namespace) .Values.watch.namespaces) -}}
{{- end -}}
{{- end -}}

{{/*
The operator's rules in the namespaces it watches: exactly the verbs its code uses
(operator/modelfleet/operator/kube.py and handlers.py, plus kopf). It never deletes
anything: children carry owner references and the garbage collector removes them.
*/}}
{{- define "modelfleet.namespacedRules" -}}
# kopf lists and watches both resources; get reads a model's pool and a pool in its
# convergence pass; patch adds kopf's finalizer and its bookkeeping annotations, and
# promotes a canary whose analysis passed (the spec's version and source, as a person would).
- apiGroups: [modelfleet.io]
  resources: [inferencepools, inferencemodels]
  verbs: [get, list, watch, patch]
# Status (conditions, versions, replicas, endpoints) is written through the status subresource only.
- apiGroups: [modelfleet.io]
  resources: [inferencepools/status, inferencemodels/status]
  verbs: [patch]
# Pool pods: listed by label in every pass and watched so that routes follow pod changes.
# Never created or deleted by the operator (the StatefulSet and Deployment controllers do).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Each pool's desired-state and routes ConfigMaps: read to compare, then server-side
# applied (apply is a patch, and a create when the object does not exist yet).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, patch]
# Each pool's admin-token Secret (<pool>-admin-token): read to call the pods' admin API,
# created once by server-side apply. No list or watch: other Secrets stay unreadable in bulk.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
# The pool's headless and gateway Services and one Service per model: server-side applied.
- apiGroups: [""]
  resources: [services]
  verbs: [create, patch]
# The runtime StatefulSet and the gateway Deployment of each pool: server-side applied;
# the StatefulSet is also read and its replicas patched as the pool grows and shrinks
# (spec.replicas.min..max).
- apiGroups: [apps]
  resources: [statefulsets, deployments]
  verbs: [get, create, patch]
# One PodDisruptionBudget per pool (one runtime pod down at a time): server-side applied.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [create, patch]
# Events on pools and models (Placed, Evicted, TrafficSplit, ...) and kopf's own
# warnings: core v1 Events, posted only.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
