{{/* Chart name, overridable. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name. Cluster-scoped objects (ClusterRoles, bindings)
carry it too, so two releases never fight over one name.
*/}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the operator's Deployment, Service, Roles. */}}
{{- define "sluice.operatorName" -}}
{{- printf "%s-operator" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of the operator's pods. They are also passed to the operator as
--operator-pod-labels: the managed Redis NetworkPolicy admits exactly these.
*/}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sluice.labels" -}}
helm.sh/chart: {{ include "sluice.chart" . }}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of objects that are not the operator (CRD, aggregated roles). */}}
{{- define "sluice.commonLabels" -}}
helm.sh/chart: {{ include "sluice.chart" . }}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
{{- end }}

{{/* The selector labels as k=v,k=v for --operator-pod-labels. */}}
{{- define "sluice.podLabelsFlag" -}}
{{- $pairs := list }}
{{- range $k, $v := (include "sluice.selectorLabels" . | fromYaml) }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sluice.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, tag defaulting to the chart's appVersion. */}}
{{- define "sluice.image" -}}
{{- $img := index . 0 }}
{{- $root := index . 1 }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion ($img.tag | toString)) }}
{{- end }}

{{/*
The namespaces the operator watches, comma separated: the release namespace,
then watchNamespaces in their order, each once. Empty with clusterScope (every
namespace). Passed as --namespaces and ranged over for the Roles, so the flag
and the grants cannot disagree.
*/}}
{{- define "sluice.watchedNamespaces" -}}
{{- $extra := default (list) .Values.watchNamespaces }}
{{- if .Values.clusterScope }}
{{- if $extra }}
{{- fail "watchNamespaces must be empty with clusterScope: true (every namespace is watched)" }}
{{- end }}
{{- else }}
{{- prepend $extra .Release.Namespace | uniq | join "," }}
{{- end }}
{{- end }}

{{/*
The rules of docs/operator.md "RBAC the operator needs", exactly: nothing more.
Used by one Role per watched namespace or, with clusterScope, by the ClusterRole.
*/}}
{{- define "sluice.pipelineRules" -}}
- apiGroups: ["sluice.dev"]
  resources: ["streampipelines"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["sluice.dev"]
  resources: ["streampipelines/status"]
  verbs: ["patch"]
- apiGroups: ["sluice.dev"]
  resources: ["deadletteractions"]
  verbs: ["list", "watch", "delete"]
- apiGroups: ["sluice.dev"]
  resources: ["deadletteractions/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses", "networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects", "triggerauthentications"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "update", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
A CRD from one of the chart's files, with the chart's labels and, with
crds.keep, the annotation that keeps it on `helm uninstall`.
*/}}
{{- define "sluice.crd" -}}
{{- $crd := .root.Files.Get .file | fromYaml }}
{{- $meta := $crd.metadata }}
{{- $_ := set $meta "labels" (merge (default dict $meta.labels) (include "sluice.commonLabels" .root | fromYaml)) }}
{{- if .root.Values.crds.keep }}
{{- $_ := set $meta "annotations" (merge (default dict $meta.annotations) (dict "helm.sh/resource-policy" "keep")) }}
{{- end }}
{{- toYaml $crd }}
{{- end }}
