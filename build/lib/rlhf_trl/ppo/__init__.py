"""PPO for language models: losses (pure functions), rollout backends and the trainer."""
