-- Argo CD health of a whetstone.dev FineTuneJob.
-- Succeeded: Healthy. Failed, the spec invalid (condition Valid=False) or changed after the run
-- started (SpecApplied=False, not applied): Degraded.
-- Suspended (spec.suspend): Suspended. Anything else, or a status older than the spec: Progressing.
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
  hs.message = "Waiting for the operator to pick up the FineTuneJob"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Valid" and condition.status == "False" then
      hs.status = "Degraded"
      hs.message = text(condition.message, "The spec is invalid")
      return hs
    end
    -- What Git says cannot be reached: the run keeps the spec it started from.
    if condition.type == "SpecApplied" and condition.status == "False" then
      hs.status = "Degraded"
      hs.message = text(condition.message, "The spec changed after the run started")
      return hs
    end
  end
end
local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  if status.modelVersion ~= nil then
    hs.message = "Succeeded: registered ModelVersion " .. status.modelVersion
  else
    hs.message = text(status.message, "Succeeded")
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = text(status.message, "Failed")
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = text(status.message, "Suspended: set spec.suspend to false to resume")
else
  hs.status = "Progressing"
  local message = phase
  local progress = status.progress
  if progress ~= nil and progress.percent ~= nil then
    message = message .. ": " .. tostring(progress.percent) .. "%"
    if progress.step ~= nil and progress.totalSteps ~= nil then
      message = message .. " (step " .. tostring(progress.step) .. "/" .. tostring(progress.totalSteps) .. ")"
    end
  elseif text(status.message, nil) ~= nil then
    message = message .. ": " .. status.message
  end
  hs.message = message
end
return hs
