"""ablationlab.study: schema validation, experiment resolution and every config error message."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from snakemake.utils import update_config
from snakemake.utils import validate as snakemake_validate

from ablationlab import data, datasets, recipe, study, train
from ablationlab.defaults import SCHEMA_PATH as SCHEMA
from ablationlab.defaults import load_schema

REPO = Path(__file__).resolve().parents[1]


def _yaml(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.fixture(scope="module")
def default_config() -> dict:
    return _yaml("config.yaml")


@pytest.fixture(scope="module")
def smoke_config() -> dict:
    return study.read_config([REPO / "config.yaml", REPO / "presets" / "smoke.yaml"])


def _group(config: dict, gid: str) -> dict:
    return next(g for g in config["ablations"] if g["id"] == gid)


# --------------------------------------------------------------------------- resolution


def test_default_study_resolves(default_config):
    s = study.load(default_config)
    exps = s.experiments["experiments"]
    ids = [e["id"] for e in exps]
    assert ids[0] == "baseline" and len(ids) == len(set(ids))
    assert s.experiments["dataset"] == "cifar10" and s.experiments["seeds"] == [0, 1, 2]
    assert exps[0] == {
        "id": "baseline",
        "group": "baseline",
        "variant": "baseline",
        "reference": None,
        "sweep": None,
        "recipe": recipe.complete(default_config["baseline"]),
    }
    groups = [g["id"] for g in default_config["ablations"]]
    assert [g["id"] for g in s.report["groups"]] == groups  # config order
    assert {
        "batch_norm",
        "early_stopping",
        "augmentation",
        "dropout",
        "optimizer",
        "learning_rate",
        "batch_size",
        "scheduler",
        "init",
        "loss",
        "transfer",
        "best_model",
    } <= set(groups)
    by_id = {e["id"]: e for e in exps}
    # a variant is its partial recipe deep-merged over the base; the rest is the baseline's
    bn = by_id["batch_norm/bn"]["recipe"]
    assert bn["model"]["batch_norm"] is True and bn["model"]["widths"] == exps[0]["recipe"]["model"]["widths"]
    # a sweep: names from the label, the value set on the base recipe, recorded as the sweep
    p3 = by_id["dropout/p=0.3"]
    assert p3["sweep"] == {"key": "model.dropout", "value": 0.3} and p3["recipe"]["model"]["dropout"] == 0.3
    assert [e for e in ids if e.startswith("learning_rate/")] == [
        "learning_rate/lr=0.1",
        "learning_rate/lr=0.01",
        "learning_rate/lr=0.0001",
    ]
    # a group on another experiment: hflip p sweep over augmentation/hflip's augment list
    flip = by_id["hflip_probability/p=0.25"]
    assert flip["reference"] == "augmentation/hflip"
    assert flip["recipe"]["augment"] == [{"name": "hflip", "p": 0.25}]
    # augmentation items get their defaults filled (explicit recipes)
    assert by_id["augmentation/crop"]["recipe"]["augment"] == [{"name": "crop", "padding": 4, "p": 1.0}]
    assert {e["recipe"]["model"]["name"] for e in exps if e["group"] == "transfer"} == {"resnet18", "vgg11_bn"}
    assert all(e["recipe"]["input"]["resize"] in (112, 224) for e in exps if e["group"] == "transfer")


def test_presets_have_the_study_shape(default_config):
    quick = study.load(study.read_config([REPO / "config.yaml", REPO / "presets" / "quick.yaml"]))
    assert quick.experiments["dataset"] == "digits" and len(quick.experiments["seeds"]) >= 3
    assert [g["id"] for g in quick.report["groups"]] == [g["id"] for g in default_config["ablations"]]
    assert all(e["recipe"]["model"]["weights"] == "none" for e in quick.experiments["experiments"])
    smoke = study.load(study.read_config([REPO / "config.yaml", REPO / "presets" / "smoke.yaml"]))
    assert len(smoke.experiments["seeds"]) == 1 and 2 <= len(smoke.report["groups"]) <= 3
    assert max(e["recipe"]["epochs"] for e in smoke.experiments["experiments"]) <= 2


def test_presets_replace_the_groups_as_snakemake_merges_them():
    """--configfile deep-merges mappings; lists (ablations, seeds) replace: the preset's groups only."""
    merged = _yaml("config.yaml")
    update_config(merged, _yaml("presets/smoke.yaml"))
    assert merged == study.read_config([REPO / "config.yaml", REPO / "presets" / "smoke.yaml"])
    assert merged["ablations"] == _yaml("presets/smoke.yaml")["ablations"]
    assert merged["baseline"]["optimizer"] == _yaml("config.yaml")["baseline"]["optimizer"]  # kept
    assert merged["baseline"]["epochs"] == 1  # overridden


def test_snakemake_validate_fills_the_same_defaults(default_config):
    cfg = {"baseline": {"epochs": 3}, "ablations": [{"id": "g", "title": "G", "variants": {"v": {"epochs": 5}}}]}
    mine = study.validate(cfg)
    snakemake_validate(cfg, str(SCHEMA))  # fills defaults in place
    assert cfg == mine
    # the baseline is completed; a variant stays partial (its keys come from its base)
    assert mine["baseline"] == recipe.complete({"epochs": 3})
    assert mine["ablations"][0]["variants"]["v"] == {"epochs": 5}
    assert mine["tracking"]["uri"] == "sqlite:///results/mlflow.db" and mine["seeds"] == [0, 1, 2]


def test_resolution_is_deterministic_and_notes_only_change_the_report(smoke_config):
    first, again = study.load(smoke_config), study.load(copy.deepcopy(smoke_config))
    assert first == again
    edited = copy.deepcopy(smoke_config)
    edited["ablations"][0]["notes"] = "New *notes*."
    changed = study.load(edited)
    assert changed.experiments == first.experiments
    assert changed.report["groups"][0]["notes"] == "New *notes*."
    assert changed.report["config_hash"] != first.report["config_hash"]


def test_report_redacts_tracking_passwords(smoke_config):
    cfg = copy.deepcopy(smoke_config)
    cfg["tracking"]["uri"] = "https://alice:s3cret@mlflow.example.org:5000/path"
    rep = study.load(cfg).report
    assert "s3cret" not in json.dumps(rep) and "alice" not in json.dumps(rep)
    assert rep["tracking"]["uri"] == "https://***@mlflow.example.org:5000/path"
    assert rep["tracking"]["experiment"] == "smoke"


def test_bases_resolve_in_any_order(smoke_config):
    cfg = copy.deepcopy(smoke_config)
    cfg["ablations"].insert(
        0, {"id": "on_bn", "title": "On BN", "base": "batch_norm/bn", "variants": {"wide": {"model": {"widths": [8]}}}}
    )
    exps = {e["id"]: e for e in study.resolve(cfg)["experiments"]}
    assert exps["on_bn/wide"]["reference"] == "batch_norm/bn"
    assert exps["on_bn/wide"]["recipe"]["model"]["batch_norm"] is True
    assert exps["on_bn/wide"]["recipe"]["model"]["widths"] == [8]


# --------------------------------------------------------------------------- bad input


def _variant(recipe_part):
    return lambda c: c["ablations"][0]["variants"].update(x=recipe_part)


BAD = {
    "unknown top-level key": (lambda c: c.update(sedds=[1]), "sedds: unknown key 'sedds' (did you mean 'seeds'?)"),
    "unknown recipe key": (
        lambda c: c["baseline"]["model"].update(batchnorm=True),
        "baseline.model.batchnorm: unknown key 'batchnorm' (did you mean 'batch_norm'?)",
    ),
    "unknown group key": (
        lambda c: c["ablations"][0].update(variant={}),
        "ablations[batch_norm].variant: unknown key 'variant' (did you mean 'variants'?)",
    ),
    "wrong type": (lambda c: c["baseline"].update(epochs="ten"), "baseline.epochs: expected integer, got string 'ten'"),
    "wrong type in a variant": (
        _variant({"optimizer": {"lr": "fast"}}),
        "ablations[batch_norm].variants.x.optimizer.lr: expected number, got string 'fast'",
    ),
    "unknown model": (
        _variant({"model": {"name": "resnet50"}}),
        "ablations[batch_norm].variants.x.model.name: unknown value 'resnet50' (did you mean 'resnet18'?); "
        "choose one of: simple_cnn, vgg_style, resnet18, vgg11_bn",
    ),
    "unknown optimizer": (
        _variant({"optimizer": {"name": "lbfgs"}}),
        "ablations[batch_norm].variants.x.optimizer.name: unknown value 'lbfgs'",
    ),
    "unknown scheduler": (
        _variant({"scheduler": {"name": "exponential"}}),
        "ablations[batch_norm].variants.x.scheduler.name: unknown value 'exponential'",
    ),
    "unknown loss": (
        _variant({"loss": {"name": "hinge"}}),
        "ablations[batch_norm].variants.x.loss.name: unknown value 'hinge'",
    ),
    "unknown augmentation": (
        _variant({"augment": [{"name": "mixup"}]}),
        "ablations[batch_norm].variants.x.augment[0].name: unknown value 'mixup'",
    ),
    "unknown augmentation key": (
        _variant({"augment": [{"name": "hflip", "degrees": 5}]}),
        "ablations[batch_norm].variants.x.augment[0].degrees: unknown key 'degrees'; allowed keys: name, p",
    ),
    "probability above 1": (
        _variant({"augment": [{"name": "hflip", "p": 1.5}]}),
        "ablations[batch_norm].variants.x.augment[0].p: 1.5 is greater than the maximum of 1",
    ),
    "dropout of 1": (
        _variant({"model": {"dropout": 1.0}}),
        "ablations[batch_norm].variants.x.model.dropout: 1.0 is greater than or equal to the maximum of 1",
    ),
    "even kernel": (
        _variant({"model": {"kernel_size": 4}}),
        "ablations[batch_norm].variants.x.model.kernel_size: must be odd, got 4",
    ),
    "sweep over a missing key": (
        lambda c: c["ablations"][1]["sweep"].update(key="model.dropuot"),
        "ablations[dropout].sweep.key: 'model.dropuot' does not exist in the recipe of base "
        "experiment 'baseline' (did you mean 'dropout'?)",
    ),
    "sweep past a list": (
        lambda c: c["ablations"][1]["sweep"].update(key="augment.0.p"),
        "ablations[dropout].sweep.key: 'augment.0.p' does not exist in the recipe of base experiment "
        "'baseline'; augment has 0 item(s)",
    ),
    "invalid sweep value": (
        lambda c: c["ablations"][1]["sweep"].update(values=[0.5, 2]),
        "ablations[dropout].sweep.values[1]: 2 is not a valid model.dropout",
    ),
    "unknown base": (
        lambda c: c["ablations"][1].update(base="batch_norm/nb"),
        "ablations[dropout].base: unknown experiment 'batch_norm/nb' (did you mean 'batch_norm/bn'?)",
    ),
    "cyclic base": (
        lambda c: (c["ablations"][0].update(base="dropout/p=0.5"), c["ablations"][1].update(base="batch_norm/bn")),
        "ablations[batch_norm].base: 'dropout/p=0.5' makes a cycle of bases: batch_norm -> dropout -> batch_norm",
    ),
    "base in its own group": (
        lambda c: c["ablations"][1].update(base="dropout/p=0.5"),
        "ablations[dropout].base: 'dropout/p=0.5' makes a cycle of bases: dropout -> dropout",
    ),
    "duplicate group": (
        lambda c: c["ablations"].append(copy.deepcopy(c["ablations"][0])),
        "ablations[2].id: duplicate group id 'batch_norm' (also ablations[0])",
    ),
    "duplicate variant": (
        lambda c: c["ablations"][1].update(variants={"p=0.5": {"epochs": 2}}),
        "ablations[dropout].sweep.values[0]: duplicate experiment id 'dropout/p=0.5' "
        "(also ablations[dropout].variants.p=0.5)",
    ),
    "duplicate sweep value": (
        lambda c: c["ablations"][1]["sweep"].update(values=[0.5, 0.5]),
        "ablations[dropout].sweep.values[1]: duplicate experiment id 'dropout/p=0.5'",
    ),
    "reserved group id": (
        lambda c: c["ablations"][0].update(id="summarize"),
        "ablations[summarize].id: 'summarize' is reserved",
    ),
    "group id of a rule's name": (
        lambda c: c["ablations"][0].update(id="train_x"),
        "ablations[train_x].id: 'train_x' is reserved",
    ),
    "group id of a further seed block's train rule": (
        lambda c: c["ablations"][0].update(id="dropout_more1"),
        "ablations[dropout_more1].id: 'dropout_more1' is reserved",
    ),
    "group without experiments": (
        lambda c: c["ablations"][0].pop("variants"),
        "ablations[batch_norm]: group 'batch_norm' has no experiments; give it variants or a sweep",
    ),
    "missing title": (lambda c: c["ablations"][0].pop("title"), "ablations[batch_norm]: missing required key 'title'"),
    "empty seeds": (lambda c: c.update(seeds=[]), "seeds: [] should be non-empty"),
    "duplicate seeds": (lambda c: c.update(seeds=[1, 1]), "seeds: [1, 1] has non-unique elements"),
    "batch larger than the train split": (
        _variant({"batch_size": 2000}),
        "ablations[batch_norm].variants.x.batch_size: batch_size 2000 is larger than "
        "the train split of digits (1293 images) in experiment 'batch_norm/x'",
    ),
    "inherited batch too large": (
        lambda c: c["baseline"].update(batch_size=1294),
        "baseline.batch_size: batch_size 1294 is larger than the train split of digits",
    ),
    "swept batch too large": (
        lambda c: c["ablations"][1].update(sweep={"key": "batch_size", "values": [64, 4096]}),
        "ablations[dropout].sweep.values[1]: batch_size 4096 is larger than the train split",
    ),
    "missing weights file": (
        _variant({"model": {"name": "resnet18", "weights": "weights/r18.pt"}}),
        "ablations[batch_norm].variants.x.model.weights: weights file 'weights/r18.pt' does not exist",
    ),
    "weights path with braces": (
        _variant({"model": {"name": "resnet18", "weights": "w/{seed}.pt"}}),
        "ablations[batch_norm].variants.x.model.weights: weights file 'w/{seed}.pt' has "
        "braces, which Snakemake reads as wildcards in an input path; rename the file",
    ),
    "missing image folder": (
        lambda c: c["data"].update(dataset="imagefolder", root="no/such/folder"),
        "data.root: image folder 'no/such/folder' does not exist",
    ),
    "unknown dataset": (
        lambda c: c["data"].update(dataset="imagenet"),
        "data.dataset: unknown value 'imagenet' (did you mean 'imagefolder'?); choose one of: cifar10",
    ),
    "unknown resource": (
        lambda c: c["resources"].update(transfer={"gpus": 1}),
        "resources.transfer.gpus: unknown key 'gpus' (did you mean 'gpu'?)",
    ),
    "unknown device": (lambda c: c.update(device="tpu"), "device: unknown value 'tpu'"),
    # non-finite numbers (YAML .nan / .inf) anywhere: a recipe, a sweep, the data block
    "NaN learning rate": (
        _variant({"optimizer": {"lr": float("nan")}}),
        "ablations[batch_norm].variants.x.optimizer.lr: nan is not a finite number",
    ),
    "infinite baseline key": (
        lambda c: c["baseline"].update(optimizer={"weight_decay": float("inf")}),
        "baseline.optimizer.weight_decay: inf is not a finite number",
    ),
    "infinite sweep value": (
        lambda c: c["ablations"][1]["sweep"].update(values=[0.5, float("-inf")]),
        "ablations[dropout].sweep.values[1]: -inf is not a finite number",
    ),
    "NaN augmentation probability": (
        _variant({"augment": [{"name": "hflip", "p": float("nan")}]}),
        "ablations[batch_norm].variants.x.augment[0].p: nan is not a finite number",
    ),
    "NaN val_size": (lambda c: c["data"].update(val_size=float("nan")), "data.val_size: nan is not a finite number"),
    "fractional val_size above 1": (
        lambda c: c["data"].update(val_size=1.5),
        "data.val_size: 1.5 must be a fraction in (0, 1) or a whole count of images >= 1",
    ),
    "fractional val_size of an image folder": (
        lambda c: c["data"].update(dataset="imagefolder", root=str(REPO / "src"), val_size=2.5),
        "data.val_size: 2.5 must be a fraction in (0, 1) or a whole count of images >= 1",
    ),
    "alpha above one half": (
        lambda c: c.update(statistics={"alpha": 0.7}),
        "statistics.alpha: 0.7 is greater than the maximum of 0.5",
    ),
    "power of 1": (
        lambda c: c.update(statistics={"power": 1}),
        "statistics.power: 1 is greater than or equal to the maximum of 1",
    ),
    "unknown statistics key": (
        lambda c: c.update(statistics={"min_efect": 0.02}),
        "statistics.min_efect: unknown key 'min_efect' (did you mean 'min_effect'?)",
    ),
    "decreasing augmentation range": (
        _variant({"augment": [{"name": "blur", "sigma": [2.0, 1.0]}]}),
        "ablations[batch_norm].variants.x.augment[0].sigma: min > max in [2.0, 1.0] (experiment 'batch_norm/x')",
    ),
    "NaN in a new config block": (
        lambda c: c.update(statistics={"alpha": float("nan")}),
        "statistics.alpha: nan is not a finite number",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_invalid_config_names_the_key(smoke_config, case):
    cfg = copy.deepcopy(smoke_config)
    modify, expected = BAD[case]
    modify(cfg)
    with pytest.raises(study.ConfigError) as err:
        study.load(cfg)
    assert expected in str(err.value)
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


# digits: 1437 training-pool images; a fraction takes ceil(fraction × 1437) of them, a whole count that many
@pytest.mark.parametrize(("val_size", "n_train"), [(0.5, 718), (1, 1436), (100, 1337), (100.0, 1337)])
def test_val_size_fraction_or_whole_count_passes(smoke_config, val_size, n_train):
    """Both forms pass, and the train split they leave is the one batch_size is checked against."""
    cfg = copy.deepcopy(smoke_config)
    cfg["data"]["val_size"] = val_size
    cfg["baseline"]["batch_size"] = n_train  # one full batch: allowed
    assert study.load(cfg).config["data"]["val_size"] == val_size
    cfg["baseline"]["batch_size"] = n_train + 1
    with pytest.raises(
        study.ConfigError,
        match=rf"batch_size {n_train + 1} is larger than the train split of digits \({n_train} images\)",
    ):
        study.load(cfg)


def test_several_schema_errors_are_listed_together(smoke_config):
    cfg = copy.deepcopy(smoke_config)
    cfg.update(device="quantum", threads=0)
    with pytest.raises(study.ConfigError) as err:
        study.load(cfg)
    assert str(err.value).splitlines() == [
        "invalid configuration:",
        "  device: unknown value 'quantum'; choose one of: auto, cpu, cuda, mps",
        "  threads: 0 is less than the minimum of 1",
    ]


def test_existing_weights_file_and_image_folder_pass(smoke_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("r18.pt").write_bytes(b"x")
    for split in ("train", "test"):
        (tmp_path / "imgs" / split / "cat").mkdir(parents=True)
    cfg = copy.deepcopy(smoke_config)
    cfg["data"].update(dataset="imagefolder", root="imgs")
    cfg["baseline"]["batch_size"] = 100_000  # unknown split size: checked by train, not here
    _variant({"model": {"name": "resnet18", "weights": "r18.pt"}})(cfg)
    assert study.resolve(cfg)["experiments"][-1]["id"] == "dropout/p=0.5"


def test_train_pool_sizes_match_prepared_digits(digits_dir):
    meta = data.load_meta(digits_dir)
    assert meta["splits"]["train"] + meta["splits"]["val"] == datasets.get("digits").train_pool
    assert study._train_size({"dataset": "digits", "val_size": 0.1}) == meta["splits"]["train"]


# --------------------------------------------------------------------------- the schema itself


def _walk(node, path=()):
    """Yield (path, subschema) of every property subschema."""
    if isinstance(node, dict):
        for key, sub in (node.get("properties") or {}).items():
            yield path + (key,), sub
            yield from _walk(sub, path + (key,))
        for key in ("items", "additionalProperties", "then"):
            if isinstance(node.get(key), dict):
                yield from _walk(node[key], path + (key,))
        for sub in node.get("allOf", []):
            yield from _walk(sub, path)
        for key, sub in (node.get("$defs") or {}).items():
            if key != "recipe_defaults":
                yield from _walk(sub, path + ("$defs", key))


def test_every_key_is_described_typed_and_closed():
    schema = load_schema()
    keys = list(_walk(schema))
    assert len(keys) > 100
    for path, sub in keys:
        ref = schema["$defs"].get(sub.get("$ref", "").rpartition("/")[2], {})
        described = sub.get("description") or ref.get("description")
        assert described, f"{'.'.join(path)}: no description"
        assert {"type", "enum", "const", "$ref", "allOf"} & set(sub), f"{'.'.join(path)}: no type"
        if sub.get("type") == "object" and "properties" in sub:
            assert "additionalProperties" in sub, f"{'.'.join(path)}: open object"
    # every setting outside recipes has a default; recipe defaults are DEFAULT_RECIPE
    for section in ("study", "data", "tracking", "report"):
        for key, sub in schema["properties"][section]["properties"].items():
            assert "default" in sub, f"{section}.{key}: no default"
    for key, sub in schema["$defs"]["resources"]["properties"].items():
        assert "default" in sub, f"resources.{key}: no default"


def _defaults(node):
    return {k: (_defaults(v) if "properties" in v else v["default"]) for k, v in node["properties"].items()}


def test_statistics_settings_reach_the_study_table(smoke_config):
    assert study.load(smoke_config).experiments["statistics"] == {
        "alpha": 0.05,
        "power": 0.8,
        "min_effect": 0.01,
        "looks": 1,
    }
    cfg = copy.deepcopy(smoke_config)
    cfg["statistics"] = {"alpha": 0.01, "min_effect": 0.005}
    table = study.load(cfg).experiments
    assert table["statistics"] == {"alpha": 0.01, "power": 0.8, "min_effect": 0.005, "looks": 1}


# A recipe in a config (the study: the whole config schema) and a recipe given to train (its pre-flight:
# train.validate, i.e. the schema's recipe definition and the rules it cannot express, then train.setup, which
# builds the model, optimizer, scheduler, loss and augmentations) are refused alike.
AUGMENT_CASES = [
    {"name": "hflip"},
    {"name": "hflip", "p": 1.5},
    {"name": "hflip", "p": -0.1},
    {"name": "crop", "padding": -1},
    {"name": "crop", "padding": 2.5},
    {"name": "rotation", "degrees": [-10, 30]},
    {"name": "rotation", "degrees": 400},
    {"name": "color_jitter", "hue": 0.6},
    {"name": "blur", "kernel_size": 4},
    {"name": "blur", "sigma": 1.0},
    {"name": "blur", "sigma": [0.1, 2, 3]},
    {"name": "erasing", "scale": [0.1, 1.5]},
    {"name": "grayscale", "p": 1},
    {"name": "vflip", "padding": 1},
    {"name": "sharpen"},
    {"p": 0.5},
]
RECIPE_CASES = [{"augment": [item]} for item in AUGMENT_CASES] + [
    {"model": {"name": "lenet"}},
    {"model": {"name": "vgg_style", "widths": [8, 16]}},
    {"model": {"widths": []}},
    {"model": {"widths": [8, 0]}},
    {"model": {"hidden": []}},
    {"model": {"kernel_size": 0}},
    {"model": {"kernel_size": 3}},
    {"model": {"convs_per_block": 0}},
    {"model": {"dropout": 1.0}},
    {"model": {"dropout": 0.5, "dropout_where": "both"}},
    {"model": {"dropout_where": "all"}},
    {"model": {"activation": "swish"}},
    {"model": {"activation": "gelu", "init": "kaiming"}},
    {"model": {"init": "orthogonal"}},
    {"model": {"batch_norm": "yes"}},
    {"model": {"weights": "imagenet"}},
    {"model": {"train": "frozen"}},
    {"model": {"name": "resnet18", "train": "frozen"}, "input": {"resize": 32}},
    {"model": {"name": "resnet18", "weights": ""}},
    {"model": {"colour": 1}},
    {"optimizer": {"name": "adamx"}},
    {"optimizer": {"name": "adamw", "weight_decay": 0.05}},
    {"optimizer": {"lr": 0}},
    {"optimizer": {"lr": -1}},
    {"optimizer": {"weight_decay": -0.1}},
    {"optimizer": {"momentum": 1.0}},
    {"optimizer": {"name": "momentum", "momentum": 0.5, "nesterov": True}},
    {"scheduler": {"name": "cyclic"}},
    {"scheduler": {"name": "step", "step_size": 0}},
    {"scheduler": {"name": "step", "gamma": 0}},
    {"scheduler": {"name": "plateau", "patience": -1}},
    {"scheduler": {"name": "plateau", "patience": 0}},
    {"scheduler": {"name": "onecycle"}},
    {"loss": {"name": "hinge"}},
    {"loss": {"name": "mse", "label_smoothing": 0.1}},
    {"loss": {"label_smoothing": 1.0}},
    {"batch_size": 0},
    {"batch_size": 2.5},
    {"epochs": 0},
    {"epochs": 3},
    {"early_stopping": {"monitor": "val_f1"}},
    {"early_stopping": {"enabled": True, "monitor": "val_acc"}},
    {"early_stopping": {"patience": 0}},
    {"early_stopping": {"min_delta": -1}},
    {"input": {"resize": 0}},
    {"input": {"resize": 16, "standardize": False}},
]
META = {"channels": 3, "height": 8, "width": 8, "num_classes": 10, "mean": [0.5] * 3, "std": [0.2] * 3}


def _library_accepts(override: dict) -> bool:
    rec = recipe.complete(override)
    try:
        train.validate(rec, 1000)
        train.setup(rec, META, 1000, torch.device("cpu"))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("override", RECIPE_CASES, ids=[json.dumps(c) for c in RECIPE_CASES])
def test_schema_agrees_with_the_library_on_recipes(smoke_config, override):
    cfg = copy.deepcopy(smoke_config)
    cfg["baseline"] = recipe.deep_merge(cfg["baseline"], override)
    try:
        study.validate(cfg)
        schema_ok = True
    except study.ConfigError:
        schema_ok = False
    assert schema_ok == _library_accepts(override)


def test_a_variant_that_breaks_a_cross_key_rule_is_refused(smoke_config):
    cfg = copy.deepcopy(smoke_config)
    cfg["baseline"]["model"] = {"name": "resnet18", "weights": "imagenet"}
    cfg["ablations"] = [{"id": "g", "title": "G", "variants": {"cnn": {"model": {"name": "simple_cnn"}}}}]
    with pytest.raises(
        study.ConfigError,
        match=r"^baseline\.model\.weights: only resnet18 and vgg11_bn take "
        r"weights \(use none\), got 'imagenet' in experiment 'g/cnn'$",
    ):
        study.load(cfg)


# --------------------------------------------------------------------------- CLI


def test_cli_lists_and_writes_the_study(tmp_path, capsys):
    rc = study.cli([str(REPO / "config.yaml"), str(REPO / "presets" / "smoke.yaml"), "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "3 experiments x 1 seeds = 3 runs on digits" in out and "dropout/p=0.5" in out
    written = json.loads((tmp_path / "experiments.json").read_text())
    assert [e["id"] for e in written["experiments"]] == ["baseline", "batch_norm/bn", "dropout/p=0.5"]
    assert json.loads((tmp_path / "report.json").read_text())["groups"][1]["sweep_key"] == "model.dropout"


def test_cli_reports_a_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: []\n")
    assert study.cli([str(REPO / "config.yaml"), str(bad)]) == 1
    assert capsys.readouterr().err.strip() == "error: seeds: [] should be non-empty"


def test_python_m_ablationlab_ends_fast_with_its_output_and_exit_code(tmp_path):
    """`python -m ablationlab` skips the interpreter's teardown (__main__.exit_without_teardown):
    piped output must still arrive whole, atexit handlers still run, and the exit code is the command's."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # piped stdout: block-buffered
    env["PYTHONPATH"] = str(REPO / "src")
    smoke = [str(REPO / "config.yaml"), str(REPO / "presets" / "smoke.yaml")]
    ok = subprocess.run(
        [sys.executable, "-m", "ablationlab", "study", *smoke, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0 and ok.stdout.rstrip().endswith("3 experiments x 1 seeds = 3 runs on digits")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: []\n")
    failed = subprocess.run(
        [sys.executable, "-m", "ablationlab", "study", smoke[0], str(bad)], capture_output=True, text=True, env=env
    )
    assert failed.returncode == 1 and failed.stderr.strip() == "error: seeds: [] should be non-empty"
    hook = (
        "import atexit, runpy, sys; atexit.register(lambda: print('atexit ran', file=sys.stderr)); "
        "sys.argv = ['ablationlab', 'nonsense']; runpy.run_module('ablationlab', run_name='__main__')"
    )
    unknown = subprocess.run([sys.executable, "-c", hook], capture_output=True, text=True, env=env)
    assert unknown.returncode == 2 and "usage: python -m ablationlab" in unknown.stdout
    assert "atexit ran" in unknown.stderr


def test_cli_rejects_yaml_nan_and_inf(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("baseline:\n  optimizer: {lr: .nan}\n")
    assert study.cli([str(REPO / "config.yaml"), str(REPO / "presets" / "smoke.yaml"), str(bad)]) == 1
    assert capsys.readouterr().err.strip() == "error: baseline.optimizer.lr: nan is not a finite number"
    bad.write_text("resources: {default: {mem_mb: -.inf}}\n")
    assert study.cli([str(REPO / "config.yaml"), str(bad)]) == 1
    assert capsys.readouterr().err.strip() == "error: resources.default.mem_mb: -inf is not a finite number"


def test_the_reserved_group_ids_are_the_workflows_rule_names():
    """A group's target rule is named after its id: an id may name no other rule, and every reserved id is a
    rule of the workflow (or the baseline's experiment id); the per-group train rules carry the reserved prefix."""
    import re

    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    text = "".join(f.read_text() for f in files)
    names = set(re.findall(r"^(?:rule|checkpoint) (\w+):", text, re.M))
    assert names | {"baseline"} == study.RESERVED_IDS, study.RESERVED_IDS ^ (names | {"baseline"})
    prefixes = set(re.findall(r"^\s+name:\s+f\"(\w+)\{group\}", text, re.M))
    assert prefixes == set(study.RESERVED_PREFIXES) == {"train_"}
