{{/* The release's name prefix for every object. */}}
{{- define "console.fullname" -}}
{{- if contains "mlops-console" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-mlops-console" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
app.kubernetes.io/name stays "mlops-console": the NetworkPolicy the Kubernetes backend writes for model servers
lets them reach pods with exactly this label (worker/deployments/kube.py, console_pod_labels).
*/}}
{{- define "console.selectorLabels" -}}
app.kubernetes.io/name: mlops-console
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "console.labels" -}}
{{ include "console.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "console.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "console.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "console.secretName" -}}
{{- default (printf "%s-env" (include "console.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{- define "console.artifactsClaim" -}}
{{- default (printf "%s-artifacts" (include "console.fullname" .)) .Values.artifacts.existingClaim -}}
{{- end -}}

{{/* Pod-level fields every console pod shares: security context, pull secrets, the settings. */}}
{{- define "console.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The container fields every console container shares. */}}
{{- define "console.container" -}}
image: {{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
envFrom:
  - configMapRef:
      name: {{ include "console.fullname" . }}-config
  - secretRef:
      name: {{ include "console.secretName" . }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  - name: var
    mountPath: /data/var
  - name: artifacts
    mountPath: /data/artifacts
{{- end -}}

{{- define "console.volumes" -}}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ .Values.scratch.sizeLimit }}
  - name: var
    emptyDir:
      sizeLimit: {{ .Values.scratch.sizeLimit }}
  - name: artifacts
    persistentVolumeClaim:
      claimName: {{ include "console.artifactsClaim" . }}
{{- end -}}

{{/* Restart the pods when the settings change (env is read once, at start). */}}
{{- define "console.checksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/config.yaml") . | sha256sum }}
{{- end -}}
