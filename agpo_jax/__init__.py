"""agpo_jax: reinforcement learning with verifiable rewards in JAX, built around AGPO."""

__version__ = "0.1.0"
