"""Whetstone operator: reconciles FineTuneJob, ModelVersion and Rollout."""
