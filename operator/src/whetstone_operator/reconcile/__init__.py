"""Pure reconcile decisions: (object, observed children, now) -> (actions, status)."""
