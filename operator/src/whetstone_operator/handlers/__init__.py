"""Kopf registrations: the shared reconcile loop and one module per kind; importing this
package registers them all."""

import kopf

from whetstone_operator.handlers import (
    finetunejob,
    indexes,
    modelversion,
    platformpolicy,
    rollout,
    runtime,
)


def _daemons_without_finalizers(registry: kopf.OperatorRegistry) -> int:
    """kopf guards every timer and daemon with a finalizer so that it stops before its object
    goes. Ours only re-runs an idempotent reconcile, so that guard buys nothing and costs a
    write per object and a deletion that hangs while no operator runs: drop it (kopf is
    pinned)."""
    changed = 0
    for handler in registry._spawning.get_all_handlers():
        if getattr(handler, "requires_finalizer", False):
            object.__setattr__(handler, "requires_finalizer", False)
            changed += 1
    return changed


_daemons_without_finalizers(kopf.get_default_registry())

__all__ = ["finetunejob", "indexes", "modelversion", "platformpolicy", "rollout", "runtime"]
