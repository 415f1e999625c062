"""Command line: ``python -m ablationlab <command> [--help]``.

Each command lives in the module named after its stage; the module exposes
``cli(argv) -> int`` with its own argparse parser.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

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
    "show": ("ablationlab.show", "a finished study's results table, report and MLflow command"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    log = argv[1] if argv[:1] == ["--log"] and len(argv) > 1 else None
    argv = argv[2:] if log else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        usage = "usage: python -m ablationlab [--log FILE] <command> [--help]"
        print(f"{usage}\n\n--log FILE: the command's output and errors into FILE\n\ncommands:\n" + "\n".join(lines))
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    with _logging_to(log) as console:
        try:
            code = module.cli(argv[1:]) or 0
            _flush()
            return code
        except OSError as exc:  # disk full, unwritable directory: one line naming the file, no traceback
            line = f"error: {_naming(exc, log)}"
            with contextlib.suppress(OSError):
                print(line, file=sys.stderr, flush=True)
            if console is not sys.stderr:
                print(line, file=console, flush=True)
            return 1


@contextlib.contextmanager
def _logging_to(log: str | None) -> Iterator[TextIO]:
    """Everything the command writes to stdout and stderr (file descriptors 1 and 2: libraries' and
    warnings' output too) goes into the file ``log``, if given; yields the stderr from before, where
    a workflow job's write error is told as well: with the disk full, the log may stay empty.
    """
    if log is None:
        yield sys.stderr
        return
    console = os.fdopen(os.dup(2), "w")
    try:
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        except OSError as exc:
            print(f"error: {exc}", file=console, flush=True)
            raise SystemExit(1) from None
        _flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        yield console
    finally:
        console.close()


def _flush() -> None:
    """Flush stdout and stderr: a write error surfaces here, not in the interpreter's exit."""
    sys.stdout.flush()
    sys.stderr.flush()


def _naming(exc: OSError, log: str | None) -> OSError:
    """``exc``, or, for a write error that names no file while output goes to ``log``, the same error
    naming ``log`` (a full disk fails the buffered writes to stdout or stderr, which name no file)."""
    if exc.filename is None and log is not None and exc.errno is not None:
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), log)
    return exc


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
