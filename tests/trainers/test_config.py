import pytest

from trainers import ConfigError, TrainConfig, parse_sets


def test_defaults_are_the_cpu_recipe():
    cfg = TrainConfig()
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size) == (
        4,
        4,
        128,
        64,
    )
    assert cfg.flat()["optim.lr"] == 1e-3


def test_dotted_string_overrides_are_typed():
    cfg = TrainConfig().with_overrides(
        parse_sets(
            [
                "model.n_layer=6",
                "optim.lr=3e-4",
                "model.bias=true",
                "data.splits=0.8,0.1,0.1",
                "data.seed=none",
            ]
        )
    )
    assert cfg.model.n_layer == 6 and isinstance(cfg.model.n_layer, int)
    assert cfg.optim.lr == 3e-4
    assert cfg.model.bias is True
    assert cfg.data.splits == (0.8, 0.1, 0.1)
    assert cfg.data.seed is None


def test_nested_overrides_and_round_trip():
    cfg = TrainConfig().with_overrides({"model": {"n_embd": 64}, "train": {"batch_size": 4}})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_overrides_do_not_mutate_the_original():
    base = TrainConfig()
    base.with_overrides({"model.n_layer": 9})
    assert base.model.n_layer == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"model.n_layr": 2},
            "unknown config key 'model.n_layr' (did you mean 'n_layer'?); valid keys in model: family, n_layer",
        ),
        ({"modle.n_layer": 2}, "unknown config group in 'modle.n_layer' (did you mean 'model'?)"),
        ({"model.n_layer": "six"}, "model.n_layer expects a value of type int, but got 'six'"),
        ({"model.n_layer": 2.5}, "model.n_layer expects a value of type int, but got 2.5"),
        ({"model.bias": "maybe"}, "model.bias expects a value of type bool"),
        (
            {"model.n_embd": 100, "model.n_head": 3},
            "n_embd must be divisible by model.n_head, but got n_embd=100, n_head=3",
        ),
        (
            {"optim.name": "adamm"},
            "optim.name must be one of adamw, adam, sgd, but got 'adamm' (did you mean 'adam'?)",
        ),
        ({"optim.lr": -1.0}, "optim.lr must be positive, but got -1.0"),
        (
            {"data.splits": "0.5,0.1,0.1"},
            "data.splits must be three non-negative fractions summing to 1",
        ),
        ({"model.dropout": 1.5}, "model.dropout must be in [0.0, 1.0), but got 1.5"),
        ({"train.batch_size": 0}, "train.batch_size must be at least 1"),
    ],
)
def test_bad_overrides_are_refused_with_the_right_message(overrides, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig().with_overrides(overrides)
    assert message in str(err.value)


def test_set_without_equals_is_refused():
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_sets(["model.n_layer"])
