"""Whetstone on one machine, without a cluster: a FineTuneJob rendered by the operator's own
code, trained by the trainer, and the ModelVersion the operator would register."""
