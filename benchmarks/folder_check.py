"""Cost of the image-folder change check: :func:`ablationlab.data.folder_manifest` on a large folder.

Creates ``--files`` tiny files (a few bytes each, not images: the check only stat()s them)
in ``--classes`` class directories under train/ and test/ of a temporary folder, then
computes the manifest ``--repeats`` times (the first run is a warm page cache too: the
files were just written). Prints one line per repeat, then exactly

    files=<n> manifest_seconds_median=<s>

The workflow computes this once per `snakemake` call (while it parses, in the main process).

    python benchmarks/folder_check.py [--files 50000] [--classes 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ablationlab.data import folder_manifest


def make_folder(root: Path, files: int, classes: int) -> None:
    """``files`` files of 4 bytes, 80 % under train/<class>/, 20 % under test/<class>/."""
    for i in range(files):
        split = "test" if i % 5 == 0 else "train"
        d = root / split / f"c{i % classes:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:06d}.png").write_bytes(i.to_bytes(4, "little"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000, help="files in the folder (default 50000)")
    parser.add_argument("--classes", type=int, default=10, help="class directories per split (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="timed manifests (default 3; the median is reported)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="folder_check_") as tmp:
        root = Path(tmp)
        make_folder(root, args.files, args.classes)
        times = []
        for i in range(args.repeats):
            start = time.perf_counter()
            folder_manifest(root)
            times.append(time.perf_counter() - start)
            print(f"run {i + 1}: {times[-1]:.3f} s", flush=True)
    print(f"files={args.files} manifest_seconds_median={statistics.median(times):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
