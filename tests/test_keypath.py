"""Dotted key paths: one lookup and one flatten for config, recipes, figures, report and MLflow params."""

from ablationlab.keypath import flatten, lookup, split_key


def test_lookup_and_split():
    tree = {"optimizer": {"lr": 0.05}, "augment": [{"name": "hflip", "p": 0.5}], "none": None}
    assert split_key("augment.0.p") == ["augment", 0, "p"]
    assert lookup(tree, "optimizer.lr") == (True, 0.05) and lookup(tree, ["augment", 0, "p"]) == (True, 0.5)
    assert lookup(tree, "none") == (True, None)
    for missing in ("optimizer.momentum", "augment.1.p", "optimizer.lr.x", "augment.name"):
        assert lookup(tree, missing) == (False, None)


def test_flatten():
    flat = flatten({"model": {"widths": [32, 64], "bn": False}, "input": {}, "lr": 0.1})
    assert flat == {"model.widths": [32, 64], "model.bn": False, "input": {}, "lr": 0.1}
