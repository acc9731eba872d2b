"""Every label, annotation and finalizer name Whetstone reads or writes: one definition each."""

from __future__ import annotations

PREFIX = "whetstone.dev"

# Labels on the children and on registered ModelVersions.
LABEL_JOB = f"{PREFIX}/finetunejob"
LABEL_ROLE = f"{PREFIX}/role"
LABEL_ATTEMPT = f"{PREFIX}/attempt"
LABEL_VERSION = f"{PREFIX}/modelversion"
LABEL_MODEL = f"{PREFIX}/model"
LABEL_MODEL_VERSION = f"{PREFIX}/version"
MANAGED_BY = "whetstone"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"

# A ModelVersion's approval: asked for with APPROVE / REVOKE, recorded (signed) in APPROVAL.
APPROVE_ANNOTATION = f"{PREFIX}/approve"
REVOKE_ANNOTATION = f"{PREFIX}/revoke"
APPROVAL_ANNOTATION = f"{PREFIX}/approval"
# Who created a FineTuneJob or ModelVersion: stamped at admission, never changed after.
CREATED_BY_ANNOTATION = f"{PREFIX}/created-by"
# On an InferenceService: the Rollout that may drive it (set by whoever may edit the service).
ROLLOUT_TARGET_ANNOTATION = f"{PREFIX}/rollout"

# A Rollout's commands (the `kubectl whetstone` plugin writes them).
PROMOTE = f"{PREFIX}/promote"
ABORT = f"{PREFIX}/abort"
RETRY = f"{PREFIX}/retry"
PAUSE = f"{PREFIX}/pause"
RESUME = f"{PREFIX}/resume"
ROLLOUT_COMMANDS = {
    "promote": PROMOTE,
    "abort": ABORT,
    "retry": RETRY,
    "pause": PAUSE,
    "resume": RESUME,
}

FINALIZER = f"{PREFIX}/finalizer"
