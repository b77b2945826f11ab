{{/* Names, labels and the guard rails shared by every template. */}}

{{- define "shellgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shellgate.fullname" -}}
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

{{- define "shellgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shellgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shellgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shellgate.labels" -}}
helm.sh/chart: {{ include "shellgate.chart" . }}
{{ include "shellgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: control-plane
app.kubernetes.io/part-of: shellgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "shellgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shellgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shellgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Namespace the kubernetes driver creates Sandbox objects in. */}}
{{- define "shellgate.sandboxNamespace" -}}
{{- default .Release.Namespace .Values.sandboxNamespace }}
{{- end }}

{{/* "postgres" or "sqlite". An existingSecret is taken to hold a Postgres URL. */}}
{{- define "shellgate.databaseBackend" -}}
{{- $url := .Values.database.url | default "" }}
{{- if or .Values.database.existingSecret (hasPrefix "postgresql://" $url) (hasPrefix "postgres://" $url) }}
{{- "postgres" }}
{{- else }}
{{- "sqlite" }}
{{- end }}
{{- end }}

{{- define "shellgate.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- printf "%s-db" (include "shellgate.fullname" .) }}
{{- end }}
{{- end }}

{{- define "shellgate.dataClaimName" -}}
{{- default (printf "%s-data" (include "shellgate.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* RBAC is only rendered for the kubernetes driver. */}}
{{- define "shellgate.rbacEnabled" -}}
{{- if and .Values.rbac.create (eq .Values.driver "kubernetes") }}true{{ end }}
{{- end }}

{{/*
The rules the kubernetes driver needs, shared by the Role and the ClusterRole and kept identical
to deploy/rbac/role.yaml: agent-sandbox Sandbox objects (both served versions live in one group)
and core Events for platform events. kopf runs standalone: no peering CRDs, no leases.
*/}}
{{- define "shellgate.rbacRules" -}}
- apiGroups:
    - agents.x-k8s.io
  resources:
    - sandboxes
  verbs:
    - get
    - list
    - watch
    - create
    - patch
    - delete
- apiGroups:
    - ""
  resources:
    - events
  verbs:
    - get
    - list
    - watch
- apiGroups:
    - ""
  resources:
    - pods
  verbs:
    - get
- apiGroups:
    - ""
  resources:
    - pods/exec
  verbs:
    - create
- apiGroups:
    - ""
  resources:
    - pods/log
  verbs:
    - get
{{- end }}

{{- define "shellgate.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "shellgate.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{/*
Guard rails: fail the render on values that would deploy something broken.
*/}}
{{- define "shellgate.validate" -}}
{{- $backend := include "shellgate.databaseBackend" . }}
{{- if and (gt (int .Values.replicaCount) 1) (ne $backend "postgres") }}
{{- fail (printf "shellgate: replicaCount=%d needs Postgres. SQLite is a single-writer file on one volume and supports exactly one replica. Set database.url to a postgresql:// URL, or database.existingSecret to a Secret whose key `url` holds one, or set replicaCount=1." (int .Values.replicaCount)) }}
{{- end }}
{{- if and (eq $backend "sqlite") (not .Values.database.url) }}
{{- fail "shellgate: set database.url (sqlite:///... or postgresql://...) or database.existingSecret." }}
{{- end }}
{{- if and (eq $backend "postgres") (not .Values.encryption.existingSecret) }}
{{- fail "shellgate: Postgres needs encryption.existingSecret: a Secret whose key `key` holds the key file that seals provider credentials (every replica must use the same key; create one with `openssl rand -base64 32`)." }}
{{- end }}
{{- if and .Values.tls.clientAuth (not .Values.tls.enabled) }}
{{- fail "shellgate: tls.clientAuth needs tls.enabled=true." }}
{{- end }}
{{- if and .Values.auth.mtls (not (and .Values.tls.enabled .Values.tls.clientAuth)) }}
{{- fail "shellgate: auth.mtls names callers after their client certificates, so it needs tls.enabled=true and tls.clientAuth=true." }}
{{- end }}
{{- if not (or .Values.auth.mtls .Values.auth.oidc.issuer .Values.allowUnauthenticated) }}
{{- fail "shellgate: no authentication is configured, so anyone who reaches the gRPC port would own the gateway. Set auth.oidc.issuer, or auth.mtls=true with tls.clientAuth=true, or allowUnauthenticated=true to serve without authentication anyway." }}
{{- end }}
{{- if and (eq $backend "sqlite") (not (hasPrefix "sqlite:///" .Values.database.url)) }}
{{- fail (printf "shellgate: database.url must start with sqlite:///, postgresql:// or postgres:// (got a URL starting %q)." (regexReplaceAll "://.*" .Values.database.url "://")) }}
{{- end }}
{{- end }}
