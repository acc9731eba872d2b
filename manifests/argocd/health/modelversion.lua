-- Argo CD health of a whetstone.dev ModelVersion.
-- Approved, Serving, Retired: Healthy. Rejected: Degraded.
-- Verified while a required approval is missing: Suspended, waiting for a reviewer (like a paused
-- Deployment, it needs a person, not time); Verified without a required approval: Healthy.
-- Pending, or a status older than the spec: Progressing.
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
  hs.message = "Waiting for the operator to verify the artifact"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local phase = status.phase
if phase == "Approved" or phase == "Serving" or phase == "Retired" then
  hs.status = "Healthy"
  if phase == "Approved" and status.approvedBy ~= nil then
    hs.message = "Approved by " .. status.approvedBy
  else
    hs.message = text(status.message, phase)
  end
elseif phase == "Rejected" then
  hs.status = "Degraded"
  local message = status.message
  if (message == nil or message == "") and status.gateResults ~= nil then
    for _, gate in ipairs(status.gateResults) do
      if gate.passed == false then
        message = "Gate " .. tostring(gate.metric) .. " failed"
        break
      end
    end
  end
  hs.message = text(message, "Rejected")
elseif phase == "Verified" then
  local required = true
  if obj.spec ~= nil and obj.spec.approval ~= nil and obj.spec.approval.required == false then
    required = false
  end
  if required and status.approvedBy == nil then
    hs.status = "Suspended"
    hs.message = "Verified; waiting for approval (annotation whetstone.dev/approve)"
  else
    hs.status = "Healthy"
    hs.message = text(status.message, "Verified")
  end
else
  hs.status = "Progressing"
  hs.message = text(status.message, phase)
end
return hs
