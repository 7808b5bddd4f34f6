"""Tool-augmented rollouts: the model's tools (``tools``), their call format and observation turns (``calls``)."""
