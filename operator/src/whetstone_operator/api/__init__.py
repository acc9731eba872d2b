"""The schema of every kind: the single source of the CRDs."""

from whetstone_operator.api.common import API_VERSION, GROUP, VERSION, KindInfo
from whetstone_operator.api.finetunejob import FINETUNEJOB, FineTuneJob, FineTuneJobSpec
from whetstone_operator.api.modelversion import MODELVERSION, ModelVersion, ModelVersionSpec
from whetstone_operator.api.platformpolicy import PLATFORMPOLICY, PlatformPolicy, PlatformPolicySpec
from whetstone_operator.api.rollout import ROLLOUT, Rollout, RolloutSpec

CATEGORY = "whetstone"

# kind -> (naming and columns, the whole-object model)
KINDS: dict[
    str,
    tuple[KindInfo, type[FineTuneJob] | type[ModelVersion] | type[Rollout] | type[PlatformPolicy]],
] = {
    "FineTuneJob": (FINETUNEJOB, FineTuneJob),
    "ModelVersion": (MODELVERSION, ModelVersion),
    "Rollout": (ROLLOUT, Rollout),
    "PlatformPolicy": (PLATFORMPOLICY, PlatformPolicy),
}

__all__ = [
    "API_VERSION",
    "CATEGORY",
    "GROUP",
    "KINDS",
    "VERSION",
    "FineTuneJob",
    "FineTuneJobSpec",
    "ModelVersion",
    "ModelVersionSpec",
    "PlatformPolicy",
    "PlatformPolicySpec",
    "Rollout",
    "RolloutSpec",
]
