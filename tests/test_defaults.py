"""ablationlab.defaults: the schema's defaults and allowed values, and the implementation agreeing with them.

A default or an allowed value is written once, in the schema; the library reads it from there. What the
library implements per allowed value (a table keyed by the value, or a branch of a builder) must cover
exactly the schema's values: adding an optimizer or an augmentation is one schema edit plus its
implementation, and these tests say which half is missing.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from ablationlab import augment, datasets, defaults, models, prepare, runtime, train
from ablationlab.recipe import AUGMENT_DEFAULTS, DEFAULT_RECIPE, complete

SCHEMA = defaults.load_schema()
RECIPE = SCHEMA["$defs"]["recipe"]


def _keys(node: dict, prefix: str = "") -> set[str]:
    """Dotted keys of an object schema, nested objects' keys included."""
    out = set()
    for key, sub in node["properties"].items():
        out.add(prefix + key)
        if "properties" in sub:
            out |= _keys(sub, f"{prefix}{key}.")
    return out


def test_every_recipe_key_has_one_default():
    """The recipe's keys (type, allowed values, description) and their defaults are two trees of the schema
    (a variant stays partial: only the baseline is filled): the same keys."""
    assert _keys(SCHEMA["$defs"]["recipe_defaults"]) == _keys(RECIPE)
    assert defaults.recipe() == DEFAULT_RECIPE and DEFAULT_RECIPE["optimizer"]["lr"] == 0.05
    assert complete() == DEFAULT_RECIPE and complete() is not DEFAULT_RECIPE


def test_complete_fills_each_augmentation_and_leaves_bad_items_to_the_check():
    items = [{"name": "crop", "p": 0.5}, {"name": "nope"}, "hflip"]
    assert complete({"augment": items})["augment"] == [{"name": "crop", "padding": 4, "p": 0.5}, *items[1:]]
    assert complete(complete({"augment": items})) == complete({"augment": items})


def test_every_augmentation_is_an_op_taking_exactly_its_keys():
    assert list(augment.OPS) == list(defaults.allowed("augment.name")) == list(AUGMENT_DEFAULTS)
    for name, op in augment.OPS.items():
        assert set(inspect.signature(op).parameters) == set(AUGMENT_DEFAULTS[name]), name
        op(**AUGMENT_DEFAULTS[name])  # the defaults build it


@pytest.mark.parametrize(
    "key, table",
    [
        ("model.name", {**models.CNNS, **models.TRANSFER}),
        ("model.activation", models.ACTIVATIONS),
        ("model.init", models.INITS),
        ("model.dropout_where", models.DROPOUT_WHERE),
        ("model.train", models.TRAIN_MODES),
        ("loss.name", runtime.LOSSES),
    ],
)
def test_every_allowed_value_has_its_implementation_and_no_other(key, table):
    assert set(table) == set(defaults.allowed(key))


def test_every_optimizer_and_scheduler_is_built_and_each_differently():
    """make_optimizer and make_scheduler branch on the name: each allowed one builds, none alike."""
    param = torch.nn.Parameter(torch.zeros(2))
    built = {
        name: train.make_optimizer([param], {**DEFAULT_RECIPE["optimizer"], "name": name}) for name in train.OPTIMIZERS
    }
    assert len({(type(o), o.defaults.get("momentum")) for o in built.values()}) == len(built)
    optimizer = built["sgd"]
    schedulers = {
        name: train.make_scheduler(
            optimizer, {**DEFAULT_RECIPE["scheduler"], "name": name}, lr=0.1, epochs=3, steps_per_epoch=2
        )
        for name in train.SCHEDULERS
    }
    assert schedulers.pop("none") is None
    assert len({type(s) for s in schedulers.values()}) == len(schedulers)


def test_every_early_stopping_monitor_is_a_history_column():
    assert set(defaults.allowed("early_stopping.monitor")) <= set(train.HISTORY_COLUMNS)


def test_the_schema_offers_exactly_the_registered_datasets():
    assert SCHEMA["properties"]["data"]["properties"]["dataset"]["enum"] == list(datasets.NAMES)


def test_every_registered_dataset_has_a_parser():
    assert {d.parser for d in datasets.DATASETS.values()} == set(prepare.PARSERS)


def test_statistics_settings_take_the_schema_defaults_for_what_is_left_out():
    schema = {k: v["default"] for k, v in SCHEMA["properties"]["statistics"]["properties"].items()}
    assert defaults.statistics() == defaults.statistics({}) == {**schema, "looks": 1}
    assert defaults.statistics({"alpha": 0.01, "power": None, "looks": 3}) == {**schema, "alpha": 0.01, "looks": 3}


def test_allowed_names_a_missing_key():
    with pytest.raises(KeyError):
        defaults.allowed("optimizer.colour")
