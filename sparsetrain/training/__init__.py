"""Training: the pure step and train state (step.py), where a run starts (start.py), the loop
(loop.py), and its parts: optimizer, checkpoints, metrics tracking, sharding, memory plan."""
