"""Command line: ``python -m ablationlab <command> [--help]``.

Each command lives in the module named after its stage; the module exposes
``cli(argv) -> int`` with its own argparse parser.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading

COMMANDS = {
    "prepare": ("ablationlab.prepare", "download a dataset and write uint8 tensors + meta.json"),
    "train": ("ablationlab.train", "train one experiment for one or several seeds"),
    "evaluate": ("ablationlab.evaluate", "evaluate a trained run on the test split"),
    "adaptive": ("ablationlab.adaptive", "one look of adaptive seeding: verdicts so far, the next seeds"),
    "summarize": ("ablationlab.summarize", "aggregate runs into runs.csv / experiments.csv"),
    "figures": ("ablationlab.figures", "draw the report's figures"),
    "report": ("ablationlab.report", "render reports/report.html and report.pdf"),
    "track": ("ablationlab.track", "log runs and experiments to MLflow"),
    "study": ("ablationlab.study", "validate a config and list its experiments"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: python -m ablationlab <command> [--help]\n\ncommands:\n" + "\n".join(lines))
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        return module.cli(argv[1:]) or 0
    except OSError as exc:  # disk full, unwritable directory: one line naming the file, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


def exit_without_teardown(code: int) -> None:
    """``sys.exit(code)`` without the interpreter's teardown, which frees torch's (and sympy's,
    MLflow's) hundreds of thousands of objects one by one: 0.5-2 s per job
    (``benchmarks/job_overhead.py``). Every output is written and closed by then
    (``io.atomic_path``); non-daemon threads are joined and the atexit handlers (logging,
    MLflow) run, as in a normal exit."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # the workflow's jobs: python -m ablationlab <command>
    exit_without_teardown(main())
