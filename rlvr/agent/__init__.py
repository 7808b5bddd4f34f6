"""Tool-augmented rollouts: the model's tools (``tools``), their call format and observation turns
(``calls``), model-backed tool services (``services``, ``service_models``), the multi-turn loop around
a rollout engine (``rollout``) and the teacher that writes SFT trajectories (``teacher``)."""
