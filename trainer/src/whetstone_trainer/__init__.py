"""Whetstone trainer: fine-tunes a base model from a TrainerConfig, writes a verified artifact."""
