"""Launching training, tuning and deployment jobs on a local backend or on SageMaker."""
