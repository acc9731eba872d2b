"""The operator <-> trainer contract: the TrainerConfig the operator renders and the trainer
loads, and what the trainer hands back. pydantic only: both images import it."""
