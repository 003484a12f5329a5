"""Evaluation: token-level scoring of packed data and generation metrics on tasks."""
