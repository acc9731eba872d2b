"""Whetstone trainer: fine-tunes a base model from a TrainerConfig and writes a verified artifact."""
