"""RL alignment of the US agent (datasets, rewards, trainers, evaluation)."""
