import pickle

import pytest

from rdt_core.config import ConfigError, ExperimentConfig


def test_defaults_validate_and_flatten_to_dotted_keys():
    flat = ExperimentConfig().to_flat_dict()
    assert flat["train.lr"] == ExperimentConfig().train.lr
    assert "model.max_loops" in flat and "data.n_entities" in flat


def test_dotted_overrides_apply():
    config = ExperimentConfig.from_dict({"train": {"lr": 0.01}}, {"train.train_loops": 2, "model.d_model": 32})
    assert (config.train.lr, config.train.train_loops, config.model.d_model) == (0.01, 2, 32)


@pytest.mark.parametrize(
    "values, key",
    [
        ({"train": {"lrr": 0.1}}, "train.lrr"),
        ({"model": {"d_model": "wide"}}, "model.d_model"),
        ({"data": {"n_entities": 1}}, "data.n_entities"),
        ({"optimizer": {}}, "optimizer"),
        ({"train": {"steps": True}}, "train.steps"),  # YAML's yes: not 1 step
        ({"eval": {"halt_kl_grid": [0.01, True]}}, "eval.halt_kl_grid"),  # nor inside a list
    ],
)
def test_invalid_values_name_their_key(values, key):
    with pytest.raises(ConfigError) as caught:
        ExperimentConfig.from_dict(values)
    assert caught.value.key == key


def test_train_loops_beyond_the_readout_are_rejected():
    with pytest.raises(ConfigError, match="max_loops"):
        ExperimentConfig.from_dict({"train": {"train_loops": 9}, "model": {"max_loops": 8}})


def test_heads_must_divide_width_into_even_heads():
    with pytest.raises(ConfigError, match="n_heads"):
        ExperimentConfig.from_dict({"model": {"d_model": 30, "n_heads": 4}})


def test_a_config_error_survives_pickling_with_its_key_and_message():
    """A trial's error reaches the driver pickled (Ray): it must arrive as itself, not as a TypeError."""
    error = pickle.loads(pickle.dumps(ConfigError("data.n_test_queries", "only 69 distinct 2-hop ood queries")))
    assert isinstance(error, ConfigError)
    assert (error.key, error.message) == ("data.n_test_queries", "only 69 distinct 2-hop ood queries")
    assert str(error) == "data.n_test_queries: only 69 distinct 2-hop ood queries"
