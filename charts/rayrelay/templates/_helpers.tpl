{{/* Names, labels and small computed values shared by the templates. */}}

{{- define "rayrelay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rayrelay.fullname" -}}
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

{{- define "rayrelay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rayrelay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The selector labels as "k=v,k=v" (RAYRELAY_NETWORK_POLICY_OPERATOR_LABELS). */}}
{{- define "rayrelay.selectorLabelList" -}}
{{- $pairs := list }}
{{- range $k, $v := include "rayrelay.selectorLabels" . | fromYaml }}
{{- $pairs = append $pairs (printf "%s=%v" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* A mapping of labels as "k=v,k=v", sorted (empty for none). */}}
{{- define "rayrelay.labelList" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}
{{- $pairs = append $pairs (printf "%s=%v" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{- define "rayrelay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "rayrelay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rayrelay
{{- end }}

{{- define "rayrelay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rayrelay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* True ("true") when the operator pods elect a leader through kopf peering. */}}
{{- define "rayrelay.peering" -}}
{{- if and .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{- end }}
{{- end }}

{{- define "rayrelay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "rayrelay.workloadImage" -}}
{{- if .Values.workloadImage.digest }}
{{- printf "%s@%s" .Values.workloadImage.repository .Values.workloadImage.digest }}
{{- else }}
{{- printf "%s:%s" .Values.workloadImage.repository (default .Chart.AppVersion .Values.workloadImage.tag) }}
{{- end }}
{{- end }}

{{/* Rules every mode grants on namespaced resources (Role or ClusterRole). */}}
{{- define "rayrelay.namespacedRules" -}}
- apiGroups: ["rayrelay.dev"]
  resources: ["trainingjobs", "modeldeployments"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["rayrelay.dev"]
  resources: ["trainingjobs/status", "modeldeployments/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["rayrelay.dev"]
  resources: ["trainingjobs/finalizers", "modeldeployments/finalizers"]
  verbs: ["update", "patch"]
- apiGroups: ["ray.io"]
  resources: ["rayjobs", "rayservices"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Read-only: to surface ImagePullBackOff / Unschedulable of the Ray pods.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Read-only: KubeRay's submitter Job of a RayJob, whose failure the RayJob alone does not show.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
# get only (no list/watch): the operator reads the metadata of the one Secret a resource
# names, to check its rayrelay.dev/credentials opt-in label (it asks for
# PartialObjectMetadata; RBAC cannot grant metadata alone).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- if .Values.networkPolicy.enabled }}
# The NetworkPolicy of each RayJob / RayService (networkPolicy.enabled): created before it,
# read and patched when it exists already (409), deleted with a RayJob of a finished attempt.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "get", "patch", "delete"]
{{- end }}
{{- end }}
