"""Pure builders: desired Kubernetes objects computed from a spec, never sent from here."""
