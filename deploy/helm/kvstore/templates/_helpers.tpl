{{/*
Names. Every object is named after the release (or <release>-<name> when the release name
does not contain the chart's name, or nameOverride), or fullnameOverride; cut to 40
characters, leaving room for the suffixes used here within 63.
*/}}
{{- define "kvstore.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := .Values.nameOverride | default .Chart.Name -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kvstore.node" -}}{{ include "kvstore.fullname" . }}-node{{- end -}}
{{- define "kvstore.headless" -}}{{ include "kvstore.fullname" . }}-node-headless{{- end -}}
{{- define "kvstore.gateway" -}}{{ include "kvstore.fullname" . }}-gateway{{- end -}}

{{- define "kvstore.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "kvstore.tag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "kvstore.selector" (list . "node") */}}
{{- define "kvstore.selector" -}}
app.kubernetes.io/name: {{ (index . 0).Chart.Name }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The image tag: image.tag, else the chart's appVersion. */}}
{{- define "kvstore.tag" -}}{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}

{{- define "kvstore.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ include "kvstore.tag" . }}
{{- end -}}
{{- end -}}

{{/* The DNS name of node pod i: include "kvstore.podHost" (list . i) */}}
{{- define "kvstore.podHost" -}}
{{- $ := index . 0 -}}
{{ include "kvstore.node" $ }}-{{ index . 1 }}.{{ include "kvstore.headless" $ }}.{{ $.Release.Namespace }}.svc.{{ $.Values.clusterDomain }}
{{- end -}}

{{/*
Seeds: the peer addresses of the first min(3, replicas) ordinals. They resolve before the pods
are ready (publishNotReadyAddresses), and pod 0 alone becomes a cluster of one that the
others join, one at a time (OrderedReady).
*/}}
{{- define "kvstore.seeds" -}}
{{- $seeds := list -}}
{{- range $i := until (min 3 (int .Values.node.replicas) | int) -}}
{{- $seeds = append $seeds (printf "%s:7100" (include "kvstore.podHost" (list $ $i))) -}}
{{- end -}}
{{- join "," $seeds -}}
{{- end -}}

{{- define "kvstore.clusterSecretName" -}}
{{- .Values.clusterSecret.existingSecret | default (printf "%s-cluster-secret" (include "kvstore.fullname" .)) -}}
{{- end -}}

{{- define "kvstore.clientTokensName" -}}
{{- .Values.clientTokens.existingSecret | default (printf "%s-client-tokens" (include "kvstore.fullname" .)) -}}
{{- end -}}

{{/* Whether a component's pods call the Kubernetes API (and so mount a token). */}}
{{- define "kvstore.nodeNeedsApi" -}}
{{- if or .Values.zone.fromNodeLabel .Values.node.decommissionOnScaleDown }}true{{ end -}}
{{- end -}}

{{/* Refuses combinations that would make a cluster that cannot work. */}}
{{- define "kvstore.validate" -}}
{{- if not (kindIs "invalid" .Values.replication.replicas) -}}
{{- fail "replication.replicas was renamed replication.factor in chart 0.2.0 (copies of each key; node.replicas is the number of storage pods): move the value" -}}
{{- end -}}
{{- $n := int .Values.replication.factor -}}
{{- if lt (int .Values.node.replicas) $n -}}
{{- fail (printf "node.replicas (%d) must be at least replication.factor (%d): a smaller cluster refuses every write" (int .Values.node.replicas) $n) -}}
{{- end -}}
{{- if and .Values.node.autoscaling.enabled (lt (int .Values.node.autoscaling.minReplicas) $n) -}}
{{- fail "node.autoscaling.minReplicas must be at least replication.factor" -}}
{{- end -}}
{{- if lt (int .Values.node.autoscaling.maxReplicas) (int .Values.node.autoscaling.minReplicas) -}}
{{- fail "node.autoscaling.maxReplicas must be at least node.autoscaling.minReplicas" -}}
{{- end -}}
{{- if lt (int .Values.gateway.autoscaling.maxReplicas) (int .Values.gateway.autoscaling.minReplicas) -}}
{{- fail "gateway.autoscaling.maxReplicas must be at least gateway.autoscaling.minReplicas" -}}
{{- end -}}
{{- range $q := list "readQuorum" "writeQuorum" -}}
{{- $v := index $.Values.replication $q -}}
{{- if and (not (kindIs "invalid" $v)) (gt (int $v) $n) -}}
{{- fail (printf "replication.%s (%d) must not exceed replication.factor (%d)" $q (int $v) $n) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) -}}
{{- fail "tls.enabled needs tls.existingSecret: a Secret with tls.crt, tls.key and ca.crt" -}}
{{- end -}}
{{- end -}}

{{/* The settings nodes and gateways share: cluster, quorums, credentials. */}}
{{- define "kvstore.clusterEnv" -}}
- name: KV_SEEDS
  value: {{ include "kvstore.seeds" . | quote }}
- name: KV_EXPECT_NODES
  value: {{ .Values.node.expectNodes | default (min (int .Values.node.replicas) (int .Values.replication.factor)) | quote }}
- name: KV_REPLICAS
  value: {{ .Values.replication.factor | quote }}
{{- with .Values.replication.readQuorum }}
- name: KV_READ_QUORUM
  value: {{ . | quote }}
{{- end }}
{{- with .Values.replication.writeQuorum }}
- name: KV_WRITE_QUORUM
  value: {{ . | quote }}
{{- end }}
- name: KV_ZONE
  value: {{ .Values.zone.default | quote }}
- name: KV_CLUSTER_SECRET_FILE
  value: /etc/kvstore/secret/cluster-secret
{{- if .Values.clientTokens.enabled }}
- name: KV_CLIENT_TOKENS_FILE
  value: /etc/kvstore/secret/client-tokens
{{- end }}
{{- if .Values.adminTokens.existingSecret }}
- name: KV_ADMIN_TOKENS_FILE
  value: /etc/kvstore/secret/admin-tokens
{{- end }}
{{- if .Values.tls.enabled }}
- name: KV_TLS_CERT
  value: /etc/kvstore/secret/tls.crt
- name: KV_TLS_KEY
  value: /etc/kvstore/secret/tls.key
- name: KV_TLS_CA
  value: /etc/kvstore/secret/ca.crt
{{- end }}
{{- end -}}

{{/*
Pod and container security: podSecurityContext and securityContext (values.yaml: non-root as
the image's user 10001, nothing writable but volumes); a key set to null is left out.
*/}}
{{- define "kvstore.podSecurityContext" -}}
{{- include "kvstore.compact" .Values.podSecurityContext -}}
{{- end -}}

{{- define "kvstore.securityContext" -}}
{{- include "kvstore.compact" .Values.securityContext -}}
{{- end -}}

{{/* A map as YAML without its null entries ({} when nothing is left). */}}
{{- define "kvstore.compact" -}}
{{- $out := dict -}}
{{- range $k, $v := . -}}
{{- if not (kindIs "invalid" $v) -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Labels of one component's pods: selector labels, the chart's, podLabels. */}}
{{- define "kvstore.podLabels" -}}
{{- $ := index . 0 -}}
{{- include "kvstore.labels" $ }}
app.kubernetes.io/component: {{ index . 1 }}
{{- with $.Values.podLabels }}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/*
The replicas of a scalable workload: include "kvstore.replicas" (list . "StatefulSet" name
configured hpa). Always rendered, never null: with an HPA, an upgrade that left the field out
made Helm's three-way merge reset it to 1 (helm/helm#12650), and a node StatefulSet cut to one
pod decommissions the others. With an HPA, the live object's replicas (what the HPA chose)
when Helm can look it up; else (install, `helm template`) the configured count, at least
the HPA's minimum.
*/}}
{{- define "kvstore.replicas" -}}
{{- $ := index . 0 -}}
{{- $configured := int (index . 3) -}}
{{- $hpa := index . 4 -}}
{{- if $hpa.enabled -}}
{{- $live := lookup "apps/v1" (index . 1) $.Release.Namespace (index . 2) -}}
{{- if and $live $live.spec (hasKey $live.spec "replicas") -}}
{{- int $live.spec.replicas -}}
{{- else -}}
{{- max $configured (int $hpa.minReplicas) -}}
{{- end -}}
{{- else -}}
{{- $configured -}}
{{- end -}}
{{- end -}}

{{/*
The zone init container: reads the pod's Kubernetes node's zone label from the API and
writes it where start.sh reads it (files/zone.sh).
*/}}
{{- define "kvstore.zoneInit" -}}
- name: zone
  image: {{ include "kvstore.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["/bin/sh", "/etc/kvstore/scripts/zone.sh"]
  env:
    - name: NODE_NAME
      valueFrom:
        fieldRef:
          fieldPath: spec.nodeName
    - name: ZONE_LABEL
      value: {{ .Values.zone.label | quote }}
    - name: ZONE_DEFAULT
      value: {{ .Values.zone.default | quote }}
  securityContext:
    {{- include "kvstore.securityContext" . | nindent 4 }}
  resources:
    requests: { cpu: 10m, memory: 16Mi }
    limits: { cpu: 100m, memory: 64Mi }
  volumeMounts:
    - { name: scripts, mountPath: /etc/kvstore/scripts, readOnly: true }
    - { name: run, mountPath: /var/run/kvstore }
    - { name: kube-api-access, mountPath: /var/run/secrets/kubernetes.io/serviceaccount, readOnly: true }
{{- end -}}

{{/*
Volumes every pod has: the scripts, a small writable run directory (the zone file), /tmp, the
credentials in one read-only directory, and (only where a script calls the API) a service
account token: pods never get one automatically.
*/}}
{{- define "kvstore.volumes" -}}
{{- $ := index . 0 -}}
{{- $api := index . 1 -}}
- name: scripts
  configMap:
    name: {{ include "kvstore.fullname" $ }}-scripts
    defaultMode: 0555
- name: run
  emptyDir: { medium: Memory, sizeLimit: 1Mi }
- name: tmp
  emptyDir: { sizeLimit: 64Mi }
- name: secret
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ include "kvstore.clusterSecretName" $ }}
          items: [{ key: {{ $.Values.clusterSecret.key }}, path: cluster-secret }]
      {{- if $.Values.clientTokens.enabled }}
      - secret:
          name: {{ include "kvstore.clientTokensName" $ }}
          items: [{ key: {{ $.Values.clientTokens.key }}, path: client-tokens }]
      {{- end }}
      {{- if $.Values.adminTokens.existingSecret }}
      - secret:
          name: {{ $.Values.adminTokens.existingSecret }}
          items: [{ key: {{ $.Values.adminTokens.key }}, path: admin-tokens }]
      {{- end }}
      {{- if $.Values.tls.enabled }}
      - secret:
          name: {{ $.Values.tls.existingSecret }}
          items: [{ key: tls.crt, path: tls.crt }, { key: tls.key, path: tls.key }, { key: ca.crt, path: ca.crt }]
      {{- end }}
{{- if $api }}
- name: kube-api-access
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken: { path: token, expirationSeconds: 3607 }
      - configMap: { name: kube-root-ca.crt, items: [{ key: ca.crt, path: ca.crt }] }
{{- end }}
{{- end -}}

{{- define "kvstore.volumeMounts" -}}
- { name: scripts, mountPath: /etc/kvstore/scripts, readOnly: true }
- { name: run, mountPath: /var/run/kvstore, readOnly: true }
- { name: tmp, mountPath: /tmp }
- { name: secret, mountPath: /etc/kvstore/secret, readOnly: true }
{{- end -}}

{{/* Spread pods of one component over zones and hosts: include "kvstore.spread" (list . "node" .Values.node.topologySpread) */}}
{{- define "kvstore.spread" -}}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: {{ (index . 2).zone }}
  labelSelector:
    matchLabels:
      {{- include "kvstore.selector" (list (index . 0) (index . 1)) | nindent 6 }}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: {{ (index . 2).host }}
  labelSelector:
    matchLabels:
      {{- include "kvstore.selector" (list (index . 0) (index . 1)) | nindent 6 }}
{{- end -}}

{{- define "kvstore.scheme" -}}{{ if .Values.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}{{- end -}}
