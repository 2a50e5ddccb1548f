"""`python -m agpo_jax.memory_plan ...`: the command line (see `cli.main`)."""

from agpo_jax.memory_plan.cli import main

if __name__ == "__main__":
  raise SystemExit(main())
