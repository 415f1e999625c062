"""What a train job loads: the train command (train and evaluate, as the pipeline runs it) imports
none of the modules that cost seconds of start-up and that it does not use, and training without
torch._dynamo gives the same bytes as training with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# modules that cost a job from a fraction of a second (pandas) to as much as torch itself (torch._dynamo)
HEAVY = ("mlflow", "kornia", "torchvision", "matplotlib", "scipy", "pandas", "sklearn", "torch._dynamo", "sympy")
RECIPE = {"model": {"widths": [8], "kernel_size": 3, "hidden": [16]}, "epochs": 2, "optimizer": {"name": "adam"}}

# the job as `python -m ablationlab` runs it, then the heavy modules it loaded; argv[1]: code to run first
CHILD = """
import json, sys
exec(sys.argv[1])
from ablationlab import __main__ as entry
code = entry.main(sys.argv[3:])
loaded = [name for name in json.loads(sys.argv[2]) if name in sys.modules]
print("LOADED=" + json.dumps(loaded), flush=True)
sys.exit(code)
"""


def _train_job(digits_dir: Path, out: Path, first: str = "pass") -> list[str]:
    argv = ["train", "--data", str(digits_dir), "--recipe", json.dumps(RECIPE), "--seed", "0"]
    argv += ["--out", str(out / "seed{seed}"), "--checkpoint-dir", str(out / "ckpt{seed}")]
    argv += ["--device", "cpu", "--threads", "1", "--evaluate"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, first, json.dumps(HEAVY), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.rsplit("LOADED=", 1)[1])


def test_a_train_job_loads_no_heavy_module_and_trains_the_same_bytes_as_with_dynamo(digits_dir, tmp_path):
    assert _train_job(digits_dir, tmp_path / "lean") == []
    # with torch._dynamo loaded first, torch's optimizers take their own (dynamo) path
    assert "torch._dynamo" in _train_job(digits_dir, tmp_path / "dynamo", first="import torch._dynamo")
    for name in ("weights.pt", "weights_best.pt", "predictions.csv", "confusion.csv", "misclassified.csv"):
        assert (tmp_path / "lean" / "seed0" / name).read_bytes() == (tmp_path / "dynamo" / "seed0" / name).read_bytes()


def test_importing_the_train_and_evaluate_commands_loads_no_heavy_module():
    code = "import ablationlab.train, ablationlab.evaluate, sys; print([m for m in sys.argv[1:] if m in sys.modules])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, *HEAVY], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_the_stages_that_only_read_the_summary_load_no_statistics():
    """figures, track, report and show (the end of every run) read the summary's tables: importing them
    loads neither scipy nor statsmodels, a second of start-up each in the tail of the study."""
    code = "import ablationlab.figures, ablationlab.track, ablationlab.report, ablationlab.show, sys"
    code += "; print([m for m in sys.argv[1:] if m in sys.modules])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", code, "scipy", "statsmodels", "torch", "mlflow"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert out.stdout.strip() == "[]"
