"""Ray's schedulers as hpo builds them from a study (no cluster)."""

import numpy as np

from hpo.raytune.schedulers import make_scheduler, mutation_bounds, pbt_mutations, perturbed
from hpo.study_spec import load_study_spec


def test_pb2s_float32_proposals_stay_within_the_search_space():
    spec = load_study_spec("pbt")
    mutations = pbt_mutations(spec, {}, "pb2")
    pb2 = make_scheduler("pb2", spec, spec.fixed_config({}), mutations=mutations, pruner="none")
    # PB2's GP proposes float32 values (ray.tune.schedulers.pb2 casts them): at the space's
    # upper bounds, dropout 0.3 becomes 0.30000001
    proposed = {
        "model.dropout": np.float32(0.3),
        "log10(optim.lr)": np.float32(-2.0),
        "log10(optim.weight_decay)": np.float32(np.log10(0.3)),
    }
    assert float(proposed["model.dropout"]) > 0.3
    # what Ray does with the proposal before the member trains on it (the public hook)
    explored = perturbed(pb2._custom_explore_fn(dict(proposed)))
    bounds = mutation_bounds(spec, mutations)
    for key, value in explored.items():
        lo, hi, _ = bounds[key]
        assert lo <= value <= hi and type(value) is float, (key, value)
    assert explored["model.dropout"] == 0.3
