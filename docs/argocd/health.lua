-- Argo CD health check for Vauban's kinds (ManagedCluster, ManagedDatabase, ManagedBackup).
-- docs/argocd/argocd-cm.yaml carries it for each kind, ready to merge into argocd-cm.
-- It reads only the Kubernetes conventions Vauban follows (kstatus):
--   * status.observedGeneration behind metadata.generation -> Progressing
--   * Stalled=True                                         -> Degraded (a person must act)
--   * Ready=True                                           -> Healthy
--   * otherwise (Reconciling=True, waiting on a dependency) -> Progressing
-- Waiting on a dependency is never Degraded, so a first sync is not failed by it.
local hs = {}
if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Being deleted"
  return hs
end
if obj.status == nil or obj.status.observedGeneration == nil
    or obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for Vauban to observe the latest spec"
  return hs
end
local ready, stalled, reconciling = nil, nil, nil
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then ready = condition end
    if condition.type == "Stalled" then stalled = condition end
    if condition.type == "Reconciling" then reconciling = condition end
  end
end
local function describe(condition)
  local message = condition.reason or ""
  if condition.message ~= nil and condition.message ~= "" then
    message = message .. ": " .. condition.message
  end
  return message
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
hs.status = "Progressing"
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = describe(reconciling)
elseif ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for Vauban"
end
return hs
