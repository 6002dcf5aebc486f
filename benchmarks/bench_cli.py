"""How long the commands that only read take to answer, beside what importing torch and timm costs.

A user polls ``grid status`` and reads ``--help`` often; neither needs a model. Each command runs as a user runs
it (a fresh process, ``python -m astroclass.cli``), ``--repeats`` times (best kept), in this one call, next to
``python -c "import torch, timm"`` (what a command paid when reading a spec built its models' names with timm),
so the ratios are meaningful on a noisy machine:

* ``--help``;
* ``grid status paper`` in a folder without an experiment: reads and checks the built-in 600-run paper spec, then
  says there is no store (exit 1);
* ``grid status SPEC`` of a prepared 24-run experiment (ARIES cutouts from ../shared/data, the paper's settings on
  test_resnet, nothing trained): reads the store and, without ``--workers``, finds the machine's GPUs (torch).

Results: benchmarks/results/cli_cpu.json.
Usage: python benchmarks/bench_cli.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_grid import PAPER_SETTINGS, aries_subset  # noqa: E402

from common import save, src_env  # noqa: E402


def timed(cmd: list[str], cwd: Path, repeats: int, ok: tuple[int, ...] = (0,)) -> float:
    """Best wall time of ``cmd`` (a fresh process each time); it must exit with one of ``ok``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=src_env(), capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if proc.returncode not in ok:
            sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        best = min(best, dt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from astroclass.experiments import GridSpec
    from astroclass.experiments.runner import prepare

    cli = [sys.executable, "-m", "astroclass.cli"]
    with tempfile.TemporaryDirectory(prefix="astroclass-bench-cli-") as tmp:
        folder = Path(tmp)
        data = aries_subset(folder, 100, 32)
        spec = folder / "spec.yaml"
        spec.write_text(yaml.safe_dump({"name": "cli", "datasets": {"SG": str(data)}, "models": ["test_resnet"],
                                        "seeds": [0], **PAPER_SETTINGS}))
        prepare(GridSpec.load(spec), folder / "exp")[0].close()
        empty = folder / "empty"
        empty.mkdir()
        times = {
            "import torch, timm": timed([sys.executable, "-c", "import torch, timm"], folder, args.repeats),
            "--help": timed(cli + ["--help"], folder, args.repeats),
            "grid status paper (no experiment)": timed(cli + ["grid", "status", "paper"], empty, args.repeats, (1,)),
            "grid status (24-run experiment)": timed(cli + ["grid", "status", str(spec), "-e", str(folder / "exp")],
                                                      folder, args.repeats),
        }
    base = times["import torch, timm"]
    for name, t in times.items():
        print(f"{name:>36}: {t:6.2f} s  ({t / base:.2f}x importing torch and timm)")
    path = save("cli_cpu", {"settings": vars(args), "seconds": times,
                 "ratio_to_importing_torch_and_timm": {k: v / base for k, v in times.items()}})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
