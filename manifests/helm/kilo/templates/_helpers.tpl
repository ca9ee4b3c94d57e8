{{/* Labels shared by every object of the chart. */}}
{{- define "kilo.labels" -}}
app.kubernetes.io/name: {{ .Values.name }}
app.kubernetes.io/part-of: kilo
{{- end }}

{{/* The agent image reference. */}}
{{- define "kilo.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/* Fail early on a value outside the known setups. */}}
{{- define "kilo.check" -}}
{{- if not (has .Values.platform (list "kubeadm" "k3s")) }}
{{- fail (printf "platform must be kubeadm or k3s, not %q" .Values.platform) }}
{{- end }}
{{- if not (has .Values.cni (list "kilo" "flannel")) }}
{{- fail (printf "cni must be kilo or flannel, not %q" .Values.cni) }}
{{- end }}
{{- if not (has .Values.wireguard (list "kernel" "userspace")) }}
{{- fail (printf "wireguard must be kernel or userspace, not %q" .Values.wireguard) }}
{{- end }}
{{- end }}
