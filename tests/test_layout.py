"""ablationlab.layout: the results tree's names, the prepared data's folder and its key."""

from __future__ import annotations

from pathlib import Path

from ablationlab import layout, stages


def test_a_run_folder_and_its_patterns():
    assert layout.run_dir("results/runs", "dropout/p=0.5", 3) == Path("results/runs/dropout/p=0.5/seed3")
    assert layout.run_path("baseline", 0, "metrics.json") == "results/runs/baseline/seed0/metrics.json"
    assert layout.run_path("{experiment}", "{seed}") == "results/runs/{experiment}/seed{seed}"
    assert layout.checkpoint_path("baseline", 1) == "results/checkpoints/baseline/seed1"
    log = layout.train_job_file(layout.TRAIN_LOGS, "baseline", [0, 1], "log")
    assert log == "results/logs/train/baseline/seed0-1.log"
    assert set(layout.EVALUATE_READS) <= set(layout.TRAIN_FILES)
    for reads in (layout.SUMMARIZE_READS, layout.TRACK_READS, layout.FIGURE_READS, layout.ADAPTIVE_READS):
        assert set(reads) <= set(layout.RUN_FILES)


def test_the_seed_blocks_of_train_jobs():
    assert layout.seed_blocks([0, 1, 2]) == [[0, 1, 2]]
    assert layout.seed_blocks([0, 1, 2], per_job=1) == [[0], [1], [2]]
    assert layout.seed_blocks([0, 1, 2], per_job=2) == [[0, 1], [2]]
    assert layout.seed_blocks([0, 1, 2], per_job=5) == [[0, 1, 2]]
    adaptive = {"max_seeds": 7, "step": 2}  # the study's blocks, then adaptive seeding's
    assert layout.seed_blocks([0, 1, 2], adaptive, per_job=2) == [[0, 1], [2], [3, 4], [5, 6]]


def test_the_data_key_follows_the_options_and_the_code(tmp_path):
    code = tmp_path / "data.py"
    code.write_text("x = 1\n")
    key = layout.data_key(["--val-size", "0.1"], [code])
    assert len(key) == 12 and key == layout.data_key(["--val-size", "0.1"], [code])
    assert layout.data_key(["--val-size", "0.3"], [code]) != key
    code.write_text("x = 1\n# a comment\n")
    assert layout.data_key(["--val-size", "0.1"], [code]) != key
    assert layout.data_dir("digits", key) == f"results/data/digits-{key}"


def test_stale_data_folders_are_the_datasets_other_keys(tmp_path):
    keep = tmp_path / "digits-0123456789ab"
    for name in ("digits-0123456789ab", "digits-ba9876543210", "digits", "digits_x", "cifar10-ba9876543210"):
        (tmp_path / name).mkdir()
    assert layout.stale_data_dirs(keep) == [tmp_path / "digits", tmp_path / "digits-ba9876543210"]


def test_the_data_code_is_what_prepare_and_the_readers_both_run():
    shared = stages.shared_code("prepare", ("train", "figures"), "src/ablationlab")
    assert shared == ["src/ablationlab/data.py", "src/ablationlab/io.py"]
