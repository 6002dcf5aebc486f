"""``astroclass demo``: the whole tool on built-in data, in minutes, on a laptop.

It renders a synthetic star/galaxy set with GalSim, runs a small grid (the five paper backbones
from scratch, and efficientnet_lite0 from scratch and fine-tuned from its packaged ImageNet
weights) at the paper's preset (λ = 0.1, γ = 0, Adam), and writes the HTML report.
"""

from __future__ import annotations

import time
from pathlib import Path

from astroclass.errors import AstroclassError
from astroclass.models import PAPER_MODELS

DEMO_MODELS = [*PAPER_MODELS, "efficientnet_lite0"]


def run_demo(output: str | Path = "demo-output", n: int = 1000, epochs: int = 3, models: list[str] | None = None,
             pretrained: list[str] | None = None, seed: int = 0, workers: int | None = None,
             progress: bool = True) -> dict:
    """Render data, run the demo grid, write the report; returns paths, times and the best result.

    Re-running with the same options resumes: the data is re-used and finished runs are kept.
    """
    from astroclass.data.prepared import PreparedDataset
    from astroclass.data.synth import SynthConfig, synthesize
    from astroclass.experiments import GridOptions, GridSpec, run_grid
    from astroclass.report import build_report

    models = list(models or DEMO_MODELS)
    pretrained = ["efficientnet_lite0"] if pretrained is None else list(pretrained)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = out / "sg.h5"
    cfg = SynthConfig(task="sg", n=n, seed=seed)
    if data.exists():
        with PreparedDataset(data) as ds:
            same = ds.options.get("n") == n and ds.options.get("seed") == seed
        if not same:
            raise AstroclassError(f"{data} holds another synthetic set; choose another --output or delete it")
    else:
        if progress:
            print(f"rendering {n} synthetic star/galaxy cutouts with GalSim ...", flush=True)
        synthesize(cfg, data, show_progress=progress)
    t_data = time.perf_counter() - t0
    train = {"epochs": epochs, "patience": epochs, "batch_size": 32, "head_epochs": 1, "seed": seed}
    blocks = [{"models": models, "setups": ["scratch"]}]
    if pretrained:
        blocks.append({"models": pretrained, "setups": ["pretrained"]})
    exp = out / "experiment"
    opts = GridOptions(workers=workers, keep="best")
    for block in blocks:
        spec = GridSpec.from_dict({"name": "demo", "datasets": {"SG": str(data.resolve())}, "l2": [0.1],
                                   "maxnorm": [0.0], "optimizers": ["adam"], "seeds": [seed], "train": dict(train),
                                   **block},
                                  "demo grid", Path.cwd())
        run_grid(spec, exp, opts, progress=progress)
    t_grid = time.perf_counter() - t0 - t_data
    html = build_report(exp, out / "report")
    from astroclass.experiments import Store

    store = Store(exp / "store.sqlite", create=False)
    done = store.runs(status="done")
    counts = store.counts()
    store.close()
    best = max(done, key=lambda r: r["metrics"]["val"]["accuracy"], default=None)
    return {"report": html, "data": data, "experiment": exp, "counts": counts, "seconds": time.perf_counter() - t0,
            "data_seconds": t_data, "grid_seconds": t_grid, "best": best}
