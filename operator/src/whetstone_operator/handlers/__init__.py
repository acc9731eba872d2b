"""Kopf handler registrations, one module per kind; importing this package registers them all."""

from whetstone_operator.handlers import finetunejob, indexes, modelversion, rollout

__all__ = ["finetunejob", "indexes", "modelversion", "rollout"]
