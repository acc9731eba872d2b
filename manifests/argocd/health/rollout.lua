-- Argo CD health of a whetstone.dev Rollout.
-- Succeeded: Healthy. Aborted or Failed: Degraded. Paused: Suspended.
-- Anything else, or a status older than the spec: Progressing.
local hs = {}
local function text(value, fallback)
  if value == nil or value == "" then
    return fallback
  end
  return value
end
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to start the rollout"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local phase = status.phase
local function weight()
  if status.canaryWeight ~= nil then
    return " (canary at " .. tostring(status.canaryWeight) .. "%)"
  end
  return ""
end
if phase == "Succeeded" then
  hs.status = "Healthy"
  if status.stableModelVersion ~= nil then
    hs.message = "Serving " .. status.stableModelVersion
  else
    hs.message = text(status.message, "Succeeded")
  end
elseif phase == "Aborted" or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = text(status.abortReason, text(status.message, phase))
elseif phase == "Paused" then
  hs.status = "Suspended"
  hs.message = (text(status.message, "Paused")) .. weight()
else
  hs.status = "Progressing"
  local message = phase
  if status.currentStepIndex ~= nil then
    message = message .. ": step " .. tostring(status.currentStepIndex)
  end
  hs.message = message .. weight()
end
return hs
