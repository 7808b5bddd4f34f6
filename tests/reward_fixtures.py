"""Reward functions for tests, loaded by import path like a user's own."""


def odd_length(completions: list[str], answers: list[str], **columns) -> list[float]:
    """1.0 for completions of odd length: varies within a group even for a random model."""
    return [float(len(c) % 2) for c in completions]
