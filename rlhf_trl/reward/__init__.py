"""Reward sources beside the reward model: reward functions named as TRL names them, and remote reward servers."""
