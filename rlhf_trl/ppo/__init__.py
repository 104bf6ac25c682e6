"""PPO for language models: the trainer and its collaborators, the maths as pure functions, rollout backends."""
