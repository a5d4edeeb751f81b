"""Certified training: datasets, model zoo, certified losses, schedules, loop, checkpoints, evaluation."""
