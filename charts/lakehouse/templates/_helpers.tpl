{{/*
Names.
*/}}
{{- define "lakehouse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name, at most 63 characters (a DNS label); "-headless" and "-worker" are
appended to it, so it is cut to 52.
*/}}
{{- define "lakehouse.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lakehouse.workerName" -}}
{{- printf "%s-worker" (include "lakehouse.fullname" .) }}
{{- end }}

{{- define "lakehouse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels. Selectors carry the component (server or worker) so that the gRPC Service never
selects worker pods.
*/}}
{{- define "lakehouse.labels" -}}
helm.sh/chart: {{ include "lakehouse.chart" . }}
{{ include "lakehouse.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lakehouse
{{- end }}

{{- define "lakehouse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lakehouse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Usage: include "lakehouse.componentLabels" (dict "root" $ "component" "server") */}}
{{- define "lakehouse.componentLabels" -}}
{{ include "lakehouse.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lakehouse.componentSelectorLabels" -}}
{{ include "lakehouse.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lakehouse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lakehouse.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lakehouse.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
Secrets: the Secret's name, and which settings it feeds (a JSON object setting -> key). With
an existing Secret every listed key is wired; with the chart-managed one only keys that have a
value, so a setting without one keeps its default instead of reading an empty file.
*/}}
{{- define "lakehouse.secretName" -}}
{{- default (include "lakehouse.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{- define "lakehouse.secretFiles" -}}
{{- $out := dict }}
{{- range $setting, $key := .Values.secret.keys }}
{{- if and $key (or $.Values.secret.existingSecret (get $.Values.secret.values $key)) }}
{{- $_ := set $out $setting $key }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
Whether a setting is a path itself (tls.key_file, trino.ca_file, auth.jwks_file...: the names
ending in _FILE, as lakehouse.config.file_setting_names). Mapped to a Secret key, such a setting
gets the mounted file's path as its value; any other setting gets <SETTING>_FILE=<path>, which
the service reads the value from.
*/}}
{{- define "lakehouse.isPathSetting" -}}
{{- if hasSuffix "_FILE" . }}true{{ end }}
{{- end }}

{{/*
The environment variable that a Secret-mapped setting is wired with.
*/}}
{{- define "lakehouse.secretEnvName" -}}
{{- if include "lakehouse.isPathSetting" . }}{{ . }}{{ else }}{{ printf "%s_FILE" . }}{{ end }}
{{- end }}

{{/*
Whether a setting is given at all: in config (not null), by a wired Secret key, or in extraEnv
(itself or its _FILE form). Usage: include "lakehouse.isSet" (dict "root" $ "name" "LAKEHOUSE_...")
*/}}
{{- define "lakehouse.isSet" -}}
{{- $v := .root.Values }}
{{- $secretFiles := include "lakehouse.secretFiles" .root | fromJson }}
{{- $extraEnvNames := list }}
{{- range $v.extraEnv }}
{{- $extraEnvNames = append $extraEnvNames .name }}
{{- end }}
{{- if or (not (kindIs "invalid" (index $v.config .name))) (hasKey $secretFiles .name) (has .name $extraEnvNames) (has (printf "%s_FILE" .name) $extraEnvNames) }}true{{ end }}
{{- end }}

{{/*
Whether a boolean setting is switched off in config or extraEnv (as pydantic reads booleans).
Usage: include "lakehouse.isOff" (dict "root" $ "name" "LAKEHOUSE_...")
*/}}
{{- define "lakehouse.isOff" -}}
{{- $value := index .root.Values.config .name }}
{{- range .root.Values.extraEnv }}
{{- if and (eq .name $.name) (hasKey . "value") }}
{{- $value = .value }}
{{- end }}
{{- end }}
{{- if and (not (kindIs "invalid" $value)) (has (toString $value | lower) (list "false" "0" "off" "f" "n" "no")) }}true{{ end }}
{{- end }}

{{/*
Whether the server's probes can be the kubelet's native gRPC probes: they speak plaintext
without credentials, so not with TLS on the gRPC port (tls.cert_file, from config or a Secret)
nor when health needs credentials (auth.public_health=false). Otherwise the probes GET /readyz
and /healthz on the sidecar port, which report the same.
*/}}
{{- define "lakehouse.grpcProbes" -}}
{{- if not (or (include "lakehouse.isSet" (dict "root" . "name" "LAKEHOUSE_TLS__CERT_FILE")) (include "lakehouse.isOff" (dict "root" . "name" "LAKEHOUSE_AUTH__PUBLIC_HEALTH"))) }}true{{ end }}
{{- end }}

{{/*
Whether the catalog is shared by every pod: a catalog URI that is not SQLite (whose file would
sit in each pod's emptyDir). A URI from a Secret or extraEnv is taken to be shared.
*/}}
{{- define "lakehouse.sharedCatalog" -}}
{{- $uri := index .Values.config "LAKEHOUSE_CATALOG__URI" }}
{{- $secretFiles := include "lakehouse.secretFiles" . | fromJson }}
{{- $configured := and (not (kindIs "invalid" $uri)) (ne (toString $uri) "") }}
{{- $elsewhere := and (include "lakehouse.isSet" (dict "root" . "name" "LAKEHOUSE_CATALOG__URI")) (kindIs "invalid" $uri) }}
{{- if or (and $configured (not (hasPrefix "sqlite" (toString $uri)))) $elsewhere }}true{{ end }}
{{- end }}

{{/*
A config value as the environment sees it: lists and maps as JSON, whole numbers without an
exponent (YAML numbers arrive as float64), the rest as text.
*/}}
{{- define "lakehouse.configValue" -}}
{{- if or (kindIs "slice" .) (kindIs "map" .) }}
{{- toJson . }}
{{- else if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
Seconds the kubelet waits between the start of termination and SIGKILL: the preStop sleep,
the drain, the grace for in-flight calls, and a margin for closing the adapters.
*/}}
{{- define "lakehouse.serverTerminationGracePeriod" -}}
{{- $s := .Values.shutdown }}
{{- addf $s.preStopSleepSeconds $s.drainSeconds $s.graceSeconds $s.marginSeconds | ceil | int }}
{{- end }}

{{/* Workers take no traffic: no preStop sleep; running jobs get the grace, then requeue. */}}
{{- define "lakehouse.workerTerminationGracePeriod" -}}
{{- $s := .Values.shutdown }}
{{- addf $s.drainSeconds $s.graceSeconds $s.marginSeconds | ceil | int }}
{{- end }}

{{/*
Checks across values that the schema cannot express. Included by every Deployment.
*/}}
{{- define "lakehouse.validate" -}}
{{- $secretFiles := include "lakehouse.secretFiles" . | fromJson }}
{{- $listedKeys := values (.Values.secret.keys | default dict) }}
{{- range $key, $_ := .Values.secret.values }}
{{- if $.Values.secret.existingSecret }}
{{- fail (printf "secret.values.%s: values are only used without secret.existingSecret (%s); put the key into that Secret instead" $key $.Values.secret.existingSecret) }}
{{- end }}
{{- if not (has $key $listedKeys) }}
{{- fail (printf "secret.values.%s: no setting reads this key; map one to it in secret.keys (e.g. LAKEHOUSE_JOBS__DATABASE_URI: %s)" $key $key) }}
{{- end }}
{{- end }}
{{- if ne (len $listedKeys) (len (uniq $listedKeys)) }}
{{- fail "secret.keys: two settings map to the same key; each setting needs its own key" }}
{{- end }}
{{- range $setting := keys $secretFiles | sortAlpha }}
{{- if not (kindIs "invalid" (index $.Values.config $setting)) }}
{{- fail (printf "%s is set both in config and in secret.keys: keep one (config.%s: null, or secret.keys.%s: null)" $setting $setting $setting) }}
{{- end }}
{{- end }}
{{- $pods := or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled .Values.worker.enabled }}
{{- if and $pods (not (include "lakehouse.sharedCatalog" .)) }}
{{- fail "several pods need a shared catalog: the embedded SQLite catalog lives in each pod's emptyDir. Set config.LAKEHOUSE_CATALOG__URI to a PostgreSQL URL without the password (the password goes to the Secret key mapped to LAKEHOUSE_CATALOG__PASSWORD), or run one replica without workers" }}
{{- end }}
{{- if hasKey $secretFiles "LAKEHOUSE_CATALOG__PASSWORD" }}
{{- $uri := index .Values.config "LAKEHOUSE_CATALOG__URI" }}
{{- if eq (toString (index .Values.config "LAKEHOUSE_CATALOG__TYPE")) "rest" }}
{{- fail "secret.keys.LAKEHOUSE_CATALOG__PASSWORD is wired but the catalog is rest, which takes LAKEHOUSE_CATALOG__CREDENTIAL or LAKEHOUSE_CATALOG__TOKEN: set secret.keys.LAKEHOUSE_CATALOG__PASSWORD to null" }}
{{- else if not (include "lakehouse.isSet" (dict "root" . "name" "LAKEHOUSE_CATALOG__URI")) }}
{{- fail "secret.keys.LAKEHOUSE_CATALOG__PASSWORD is wired but no catalog URI is set (the embedded SQLite catalog has no password): set config.LAKEHOUSE_CATALOG__URI, or secret.keys.LAKEHOUSE_CATALOG__PASSWORD to null" }}
{{- else if and (not (kindIs "invalid" $uri)) (hasPrefix "sqlite" (toString $uri)) }}
{{- fail "secret.keys.LAKEHOUSE_CATALOG__PASSWORD is wired but config.LAKEHOUSE_CATALOG__URI is SQLite, which has no password: set secret.keys.LAKEHOUSE_CATALOG__PASSWORD to null" }}
{{- end }}
{{- end }}
{{- if and (not (include "lakehouse.grpcProbes" .)) (include "lakehouse.isOff" (dict "root" . "name" "LAKEHOUSE_AUTH__PUBLIC_PROBES")) }}
{{- fail "config.LAKEHOUSE_AUTH__PUBLIC_PROBES=false: the kubelet's probes carry no credentials, and with TLS on the gRPC port or LAKEHOUSE_AUTH__PUBLIC_HEALTH=false they GET /readyz and /healthz, which would refuse them and keep every pod unready. Keep LAKEHOUSE_AUTH__PUBLIC_PROBES true (restrict the port with networkPolicy.metricsFrom instead)" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (include "lakehouse.isOff" (dict "root" . "name" "LAKEHOUSE_AUTH__PUBLIC_METRICS")) }}
{{- fail "config.LAKEHOUSE_AUTH__PUBLIC_METRICS=false: the chart's ServiceMonitor scrapes /metrics without credentials, which would be refused. Keep LAKEHOUSE_AUTH__PUBLIC_METRICS true (restrict the port with networkPolicy.metricsFrom), or turn serviceMonitor off and scrape with a bearer token of your own" }}
{{- end }}
{{- if and .Values.worker.enabled (include "lakehouse.isOff" (dict "root" . "name" "LAKEHOUSE_AUTH__PUBLIC_PROBES")) }}
{{- fail "config.LAKEHOUSE_AUTH__PUBLIC_PROBES=false: the workers' probes GET /readyz and /healthz without credentials, which would be refused and keep every worker pod unready. Keep LAKEHOUSE_AUTH__PUBLIC_PROBES true (restrict the port with networkPolicy.metricsFrom instead)" }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
{{- if eq (int .Values.ports.grpc) (int .Values.ports.http) }}
{{- fail "ports.grpc and ports.http must differ" }}
{{- end }}
{{- end }}

{{/*
Environment shared by server and worker: ports, data dir, shutdown timings, secret files, then
extraEnv. Non-secret settings come from the ConfigMap through envFrom (explicit env wins).
Usage: include "lakehouse.env" (dict "root" $ "component" "server")
*/}}
{{- define "lakehouse.env" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- if eq .component "server" }}
- name: LAKEHOUSE_GRPC_PORT
  value: {{ $v.ports.grpc | int | quote }}
{{- if not (kindIs "invalid" $v.ports.flight) }}
- name: LAKEHOUSE_FLIGHT_PORT
  value: {{ $v.ports.flight | int | quote }}
{{- end }}
{{- end }}
- name: LAKEHOUSE_HTTP_PORT
  value: {{ $v.ports.http | int | quote }}
- name: LAKEHOUSE_DATA_DIR
  value: {{ $v.dataVolume.mountPath | quote }}
- name: LAKEHOUSE_SHUTDOWN_DRAIN_SECONDS
  value: {{ include "lakehouse.configValue" $v.shutdown.drainSeconds | quote }}
- name: LAKEHOUSE_SHUTDOWN_GRACE_SECONDS
  value: {{ include "lakehouse.configValue" $v.shutdown.graceSeconds | quote }}
{{- if eq .component "worker" }}
- name: LAKEHOUSE_JOBS__WORKERS
  value: {{ $v.worker.concurrency | int | quote }}
{{- else if and $v.worker.enabled (not (hasKey $v.config "LAKEHOUSE_JOBS__WORKERS")) }}
# Jobs run on the worker Deployment.
- name: LAKEHOUSE_JOBS__WORKERS
  value: "0"
{{- end }}
{{- $secretFiles := include "lakehouse.secretFiles" $root | fromJson }}
{{- range $setting := keys $secretFiles | sortAlpha }}
- name: {{ include "lakehouse.secretEnvName" $setting }}
  value: {{ printf "%s/%s" (trimSuffix "/" $v.secret.mountPath) (get $secretFiles $setting) | quote }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "lakehouse.volumeMounts" -}}
- name: data
  mountPath: {{ .Values.dataVolume.mountPath }}
- name: tmp
  mountPath: /tmp
{{- if include "lakehouse.secretFiles" . | fromJson }}
- name: secrets
  mountPath: {{ .Values.secret.mountPath }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "lakehouse.volumes" -}}
- name: data
  emptyDir:
    {{- with .Values.dataVolume.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with .Values.dataVolume.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
- name: tmp
  emptyDir:
    {{- with .Values.tmpVolume.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- $secretFiles := include "lakehouse.secretFiles" . | fromJson }}
{{- if $secretFiles }}
- name: secrets
  secret:
    secretName: {{ include "lakehouse.secretName" . }}
    # 0440: readable by the pod's group (fsGroup), nobody else.
    defaultMode: 288
    items:
      {{- range $setting := keys $secretFiles | sortAlpha }}
      - key: {{ get $secretFiles $setting }}
        path: {{ get $secretFiles $setting }}
      {{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Pod annotations: a checksum of the ConfigMap and of the chart-managed Secret, so a change of
either rolls the pods (the process reads its configuration once, at start).
*/}}
{{- define "lakehouse.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.secret.existingSecret }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}

{{/* PodDisruptionBudget spec. Usage: dict "root" $ "component" "server" "pdb" <values> */}}
{{- define "lakehouse.pdbSpec" -}}
{{- if not (kindIs "invalid" .pdb.minAvailable) }}
minAvailable: {{ .pdb.minAvailable }}
{{- else }}
maxUnavailable: {{ .pdb.maxUnavailable }}
{{- end }}
# An unready pod (e.g. during a dependency outage) must not block node drains.
unhealthyPodEvictionPolicy: AlwaysAllow
selector:
  matchLabels:
    {{- include "lakehouse.componentSelectorLabels" . | nindent 4 }}
{{- end }}

{{/*
The sidecar HTTP port's scheme for probes: HTTPS once it has a certificate, from config or a
Secret (the kubelet does not verify it).
*/}}
{{- define "lakehouse.httpScheme" -}}
{{- if include "lakehouse.isSet" (dict "root" . "name" "LAKEHOUSE_TLS__HTTP_CERT_FILE") }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}
