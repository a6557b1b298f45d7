"""Helpers shared by the benchmark scripts: threads, machine and provenance records, timing.

The scripts run as ``uv run python benchmarks/<name>.py``; Python then puts this folder
first on ``sys.path``, so each script imports this module as ``_common``. Every result
file keeps the field names these helpers have always written (``commit``, ``date``,
``median_s``, ``q1_s``, ...), so older ``benchmarks/results/*.json`` stay comparable.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drrkit.bench import cpu_model  # noqa: F401  (re-exported for the scripts)

#: The repository root and the folder the scripts write their JSON results to.
ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

#: Distributions whose versions :func:`versions` records unless told others.
DEFAULT_PACKAGES = ("numpy", "numba", "llvmlite", "scipy", "torch", "cupy-cuda12x",
                    "cupy-cuda13x")

#: 1-minute load average above which :func:`check_load` warns that timings will suffer.
BUSY_LOAD = 0.5


# ---------------------------------------------------------------------------- threads
def set_threads(threads: int, *, wait_policy: str | None = "PASSIVE") -> None:
    """Fix the thread count of every library before any of them starts its pool.

    Sets ``DRRKIT_NUM_THREADS`` (drrkit's Numba kernels) and
    ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` to ``threads``, and ``OMP_NUM_THREADS``
    unless it is already set. ``wait_policy`` (default ``"PASSIVE"``) goes into
    ``OMP_WAIT_POLICY`` unless that is already set: where Numba's and torch's OpenMP pools
    take turns, idle threads that spin steal the cores from the next runner. ``None``
    leaves ``OMP_WAIT_POLICY`` alone: use it for scripts that train, where torch runs
    alone and sleeping threads cost each of a step's many small kernels a wake-up (the
    cpu-demo identifier trained at 4.8 instead of 7.8 steps/s with ``"PASSIVE"``). Libraries that read their thread count at start-up
    only see this if it runs before they are imported.
    """
    os.environ["DRRKIT_NUM_THREADS"] = str(threads)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if wait_policy is not None:
        os.environ.setdefault("OMP_WAIT_POLICY", wait_policy)


def check_load(threshold: float = BUSY_LOAD) -> tuple[float, float, float]:
    """The load averages over 1, 5 and 15 minutes (runnable processes, as ``uptime``),
    with a warning on stderr when the 1-minute value exceeds ``threshold``."""
    load = os.getloadavg()
    if load[0] > threshold:
        print(f"warning: load average {load[0]:.1f}: other work is running, "
              "timings will be slower and noisier", file=sys.stderr)
    return load


# ---------------------------------------------------------------------------- machine
def slug(text: str) -> str:
    """A hardware name as a file-name part: lower case, no "(R)", "(TM)", "CPU" or clock
    ("@ 2.20GHz"), runs of other characters as one "-" (``"intel-xeon-processor"``)."""
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    text = re.sub(r"\bcpu\b|@.*$", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def versions(packages: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    """``{"python": version, package: installed version or None, ...}`` (distribution
    names as on PyPI, e.g. ``"itk-rtk"``)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# ---------------------------------------------------------------------------- provenance
def git(*args: str) -> str:
    """Stripped stdout of ``git *args`` run in the repository root; ``"unknown"`` when git
    is missing or fails (e.g. outside a checkout)."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def commit() -> str:
    """The checked-out commit's full hash; else ``$DRRKIT_COMMIT`` (set it where the tree
    is a copy without ``.git``, e.g. on a lent GPU machine), else ``"unknown"``."""
    found = git("rev-parse", "HEAD")
    return os.environ.get("DRRKIT_COMMIT", found) if found == "unknown" else found


def utc_now() -> str:
    """The current UTC time in ISO 8601 to the second (``2026-05-09T07:35:25+00:00``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance(sources: Sequence[str], hash_key: str) -> dict:
    """What the numbers were measured on: ``{"commit", "drrkit_dirty", hash_key, "date"}``.

    ``drrkit_dirty`` says whether ``drrkit/`` had uncommitted changes; ``hash_key`` holds
    the first 16 hex digits of the SHA-256 of the ``sources`` (paths relative to the
    repository root) read in order, a missing file counting as empty, so a result can be
    tied to the kernel code that produced it even when that code was not committed.
    """
    digest = hashlib.sha256()
    for name in sources:
        path = ROOT / name
        digest.update(path.read_bytes() if path.exists() else b"")
    return {
        "commit": commit(),
        "drrkit_dirty": bool(git("status", "--porcelain", "--", "drrkit")),
        hash_key: digest.hexdigest()[:16],
        "date": utc_now(),
    }


def write_json(path: Path, record: dict) -> Path:
    """Write ``record`` to ``path`` as indented JSON (creating its folder); return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


# ---------------------------------------------------------------------------- timing
@dataclass
class TimedRunner:
    """Base of a benchmark runner: one call under test, its timings and its last result.

    Subclasses are dataclasses that give ``run``, a callable without arguments doing the
    work, and may give ``sync``, called after every run (e.g. ``torch.cuda.synchronize``)
    so that the wall time covers asynchronous GPU work. ``wall`` collects the seconds of
    each timed call (``time.perf_counter``), ``cpu`` the process CPU seconds of each
    (``time.process_time``, all threads summed).
    """

    wall: list[float] = field(default_factory=list, init=False)
    cpu: list[float] = field(default_factory=list, init=False)
    result: object = field(default=None, init=False)

    def call(self):
        """Run once (and synchronise); return the result."""
        out = self.run()
        sync = getattr(self, "sync", None)
        if sync is not None:
            sync()
        return out

    def timed(self) -> None:
        """Run once, appending the wall and CPU seconds and keeping the result."""
        w0, c0 = time.perf_counter(), time.process_time()
        self.result = self.call()
        self.cpu.append(time.process_time() - c0)
        self.wall.append(time.perf_counter() - w0)


def time_runners(runners: Sequence[TimedRunner], warmup: int, repeats: int,
                 schedule: str = "interleaved") -> None:
    """Warm every runner up with ``warmup`` untimed calls, then time ``repeats`` calls each.

    ``interleaved``: round-robin, one call of each runner per round, so slow drifts in
    background load hit every runner alike. ``blocked``: all repeats of one runner, then
    the next.
    """
    if schedule not in ("interleaved", "blocked"):
        raise ValueError(f"schedule must be 'interleaved' or 'blocked', not {schedule!r}")
    for r in runners:
        for _ in range(warmup):
            r.result = r.call()
    if schedule == "interleaved":
        for _ in range(repeats):
            for r in runners:
                r.timed()
    else:
        for r in runners:
            for _ in range(repeats):
                r.timed()


def quartiles(times_s: Sequence[float]) -> dict[str, float]:
    """``{"median_s", "q1_s", "q3_s"}``: the 50th, 25th and 75th percentiles (NumPy's
    linear interpolation) of ``times_s``, in seconds."""
    q1, median, q3 = np.percentile(times_s, [25, 50, 75])
    return {"median_s": float(median), "q1_s": float(q1), "q3_s": float(q3)}


def summary(wall: list[float], cpu: list[float]) -> dict:
    """Timing record of one runner, all in seconds: :func:`quartiles` of ``wall`` plus
    ``iqr_s`` (q3 - q1), ``min_s``, ``cpu_median_s`` (median of ``cpu``) and every wall
    time as ``times_s``."""
    q = quartiles(wall)
    return {**q, "iqr_s": q["q3_s"] - q["q1_s"], "min_s": float(min(wall)),
            "cpu_median_s": float(np.median(cpu)), "times_s": wall}


def folder_pairs(items: Sequence[str], parser) -> list[tuple[Path, Path]]:
    """``LABELS:GT`` arguments -> (labels folder, ground-truth folder) pairs; anything else
    ends the script through ``parser.error`` (argparse's one-line message, exit 2)."""
    pairs = []
    for item in items:
        labels_dir, sep, gt = item.partition(":")
        if not sep or not Path(labels_dir).is_dir() or not Path(gt).is_dir():
            parser.error(f"{item!r} is not LABELS:GT with both folders present")
        pairs.append((Path(labels_dir), Path(gt)))
    return pairs
