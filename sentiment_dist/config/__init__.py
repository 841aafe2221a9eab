"""Hydra configuration: the schema of every config group (`schema`) and the
decorator that makes a task a command (`hydra_task`)."""
