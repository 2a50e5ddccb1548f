"""Sharding: the device mesh and its rule table (`rules`), and several processes (`multihost`).

    from agpo_jax.sharding import multihost, rules
    mesh = rules.make_mesh(config.mesh)
    params = rules.init_params_sharded(model_cfg, rng, mesh)
"""
