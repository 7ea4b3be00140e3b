{{/* Names and labels shared by every template. */}}

{{- define "vauban.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vauban.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vauban.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vauban.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vauban.labels" -}}
{{ include "vauban.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: vauban
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "vauban.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vauban.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "vauban.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
What the operator may do on namespaced resources, in every namespace it watches (a ClusterRole
in a cluster-wide install, a Role per namespace otherwise). One rule per purpose; nothing is
granted that the code does not call. Server-side apply is "patch", and also "create" when
the apply creates the object (the apiserver checks both).
*/}}
{{- define "vauban.namespacedRules" -}}
# ManagedClusters and ManagedDatabases: kopf lists and watches them, the operator re-reads
# each before reconciling it (get), and kopf patches its finalizer and its vauban.dev/
# bookkeeping annotations onto them. Never created, updated or deleted by the operator.
- apiGroups: [vauban.dev]
  resources: [managedclusters, manageddatabases]
  verbs: [get, list, watch, patch]
# ManagedBackups: the same, and the operator creates the scheduled and final backups' objects
# itself and deletes those past their retention.
- apiGroups: [vauban.dev]
  resources: [managedbackups]
  verbs: [get, list, watch, patch, create, delete]
# Status of the three kinds: written whole by server-side apply.
- apiGroups: [vauban.dev]
  resources: [managedclusters/status, manageddatabases/status, managedbackups/status]
  verbs: [patch]
# CloudNativePG Clusters rendered for managed ManagedClusters: server-side applied (created
# and repaired), read fresh before each apply (major-version check), and watched (labelled
# app.kubernetes.io/managed-by=vauban) so their status reaches the ManagedCluster. Bounded by
# the operator policy: labelled ones, allowed images only, no other identity for their pods.
- apiGroups: [postgresql.cnpg.io]
  resources: [clusters]
  verbs: [get, list, watch, create, patch]
# Their status, for a switchover a person asked for (annotation vauban.dev/switchover-to):
# the target primary and phase, as `kubectl cnpg promote` writes them (merge patch). Bounded
# by the operator policy like the Clusters themselves.
- apiGroups: [postgresql.cnpg.io]
  resources: [clusters/status]
  verbs: [patch]
# CloudNativePG ScheduledBackups of a managed cluster's base backups, following its backup
# schedule: server-side applied (create, patch; read back when the client does not decode
# the create's answer: get), removed with the schedule (delete).
- apiGroups: [postgresql.cnpg.io]
  resources: [scheduledbackups]
  verbs: [get, create, patch, delete]
# The barman-cloud plugin's ObjectStores of a managed cluster with spec.backup: its archive,
# and for spec.restore the archive it recovers from. Server-side applied (create, patch),
# read for the recovery window the plugin reports (get). Bounded by the operator policy:
# labelled ones, the bucket's credentials Secret only.
- apiGroups: [barmancloud.cnpg.io]
  resources: [objectstores]
  verbs: [get, create, patch]
# The NetworkPolicy of each managed cluster: server-side applied, watched to repair hand edits.
# Bounded by the operator policy: labelled ones, CloudNativePG pods' ingress only.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch]
# Secrets, never watched: a managed cluster's superuser Secret is created once (create); an
# external cluster's admin Secret and CA are read to connect (get); a tenant's credentials
# Secret is server-side applied (create, patch) and read back for rotation (get); on
# deletion with Retain, the cluster's Secrets are found by label (list) and released from
# their owner (patch). The tenants' credentials Secrets are watched, by label, to be
# recreated at once when deleted (watch). RBAC cannot narrow create and patch to Vauban's
# Secrets: the operator policy does (templates/operator-policy.yaml: labelled ones only,
# never a token type).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
# Volumes of a deleted cluster with deletionPolicy Retain: found by label and released from
# their owner so the garbage collector keeps them.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [list, patch]
# Services of a managed cluster, found by its label: one of type LoadBalancer would expose
# PostgreSQL outside the cluster, which compliance profiles forbid.
- apiGroups: [""]
  resources: [services]
  verbs: [list]
# One Event per state transition of an object, always a new one (create; never updated).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# The backup agent's Jobs: kopf watches them wherever it watches (labelled
# vauban.dev/component=agent); the operator acts only on those of its own namespace (below).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch]
{{- end -}}

{{/*
In the operator's own namespace only, whatever the install mode: leader election and the
backup agent, whose Jobs, CronJobs and Secrets never leave this namespace.
*/}}
{{- define "vauban.operatorNamespaceRules" -}}
# Leader election: the Lease is created by the first replica (create cannot be limited to a
# name).
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
# Leader election: the Lease vauban-leader is read and renewed (update) by its holder.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [vauban-leader]
  verbs: [get, update]
# Backup, restore and restore-test runs: a Job per run, created once (create), read for its
# outcome (get), deleted once recorded (delete). Bounded by the operator policy: the agent's
# image and command only, no token, unprivileged (so are the CronJobs below).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, create, delete]
# Backup and restore-test schedules: a CronJob per schedule, server-side applied (create,
# patch), deleted with the schedule (delete).
- apiGroups: [batch]
  resources: [cronjobs]
  verbs: [create, patch, delete]
# The pods of those Jobs, found by job-name label: their termination message is the agent's
# result.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Key-encryption and data keys, and the agent's per-run Secrets: read (get), found by label
# (list), created once or server-side applied (create, patch), deleted with their database's
# last backup or after the run (delete). Writes and deletes bounded by the operator policy:
# Vauban's labelled Secrets only (not Helm's records, nor the PIN or KMIP client Secrets).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, create, patch, delete]
{{- end -}}

{{/*
Cluster-scoped reads, needed in both install modes.
*/}}
{{- define "vauban.clusterScopedRules" -}}
# CustomResourceDefinitions: whether CloudNativePG is installed (get), and kopf's discovery of
# resources appearing later, so CloudNativePG installed after Vauban is watched (list, watch).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- if .Values.watchNamespaces }}
# Namespaces: a ManagedCluster admits tenants by namespace labels (get); kopf lists and
# watches them when it serves a list of namespaces.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- else }}
# Namespaces: a ManagedCluster admits tenants by namespace labels (get).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get]
{{- end }}
# StorageClasses: whether a cluster's volumes are encrypted at rest (compliance profiles).
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [get, list]
{{- end -}}

{{/* The namespaces of a namespaced install: those watched, and the operator's own (its agent
Jobs are watched there). */}}
{{- define "vauban.namespaces" -}}
{{- toJson (uniq (append .Values.watchNamespaces .Release.Namespace)) -}}
{{- end -}}
