{{/* Names, labels and shared values of the Whetstone chart. */}}

{{- define "whetstone.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "whetstone.fullname" -}}
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

{{- define "whetstone.selectorLabels" -}}
app.kubernetes.io/name: {{ include "whetstone.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "whetstone.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "whetstone.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: whetstone
app.kubernetes.io/managed-by: {{ .Values.managedBy | default .Release.Service }}
{{- end }}

{{- define "whetstone.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "whetstone.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "whetstone.peeringName" -}}
{{- if .Values.peering.enabled }}
{{- default (include "whetstone.fullname" .) .Values.peering.name }}
{{- end }}
{{- end }}

{{- define "whetstone.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{- define "whetstone.webhookServiceName" -}}
{{- printf "%s-webhook" (include "whetstone.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "whetstone.approvalSecretName" -}}
{{- .Values.approval.existingSecret | default (printf "%s-approval-key" (include "whetstone.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end }}

{{- define "whetstone.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "whetstone.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the Validating/MutatingWebhookConfiguration. */}}
{{- define "whetstone.webhookConfigurationName" -}}
{{- .Values.webhook.configurationName | default (printf "%s.%s.whetstone.dev" (include "whetstone.fullname" .) .Release.Namespace) }}
{{- end }}

{{/* The operator's rules, grouped as in rbac-rules.yaml. */}}
{{- define "whetstone.rules" -}}
{{- .Files.Get "rbac-rules.yaml" | fromYaml | toJson }}
{{- end }}

{{/* Refuse combinations that cannot work, with a message saying what to change. */}}
{{- define "whetstone.validate" -}}
{{- if and (not .Values.peering.enabled) (gt (int .Values.replicas) 1) }}
{{- fail "replicas > 1 needs peering.enabled=true: without peering every replica would reconcile the same objects" }}
{{- end }}
{{- if and .Values.webhook.certManager.enabled (not .Values.webhook.enabled) }}
{{- fail "webhook.certManager.enabled=true needs webhook.enabled=true" }}
{{- end }}
{{- if ne (len .Values.watchNamespaces) (len (uniq .Values.watchNamespaces)) }}
{{- fail "watchNamespaces lists a namespace twice" }}
{{- end }}
{{- end }}

{{/* Cluster-scoped names: installs that watch namespaces may coexist, so theirs carry the
release namespace. */}}
{{- define "whetstone.clusterScopedName" -}}
{{- if .Values.watchNamespaces }}
{{- printf "%s-%s" (include "whetstone.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- include "whetstone.fullname" . }}
{{- end }}
{{- end }}

{{/* The parts every webhook of the chart-written configurations shares. */}}
{{- define "whetstone.webhookCommon" -}}
admissionReviewVersions: [v1, v1beta1]
sideEffects: None
matchPolicy: Equivalent
timeoutSeconds: {{ .root.Values.webhook.timeoutSeconds }}
clientConfig:
  service:
    namespace: {{ .root.Release.Namespace }}
    name: {{ include "whetstone.webhookServiceName" .root }}
    port: {{ .root.Values.webhook.port }}
    path: /{{ .id }}
  {{- with .caBundle }}
  caBundle: {{ . }}
  {{- end }}
rules:
  - apiGroups: [whetstone.dev]
    apiVersions: [v1alpha1]
    resources: [{{ .resource }}]
    operations: [CREATE, UPDATE]
    scope: Namespaced
{{- with .root.Values.watchNamespaces }}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: In
      values: {{ toJson . }}
{{- end }}
{{- end }}
