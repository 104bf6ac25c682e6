"""rlhf-trl: DeepSpeed-Chat's three-step RLHF pipeline (SFT, reward model, PPO) on TRL, Transformers and Accelerate."""

__version__ = "0.1.0"
