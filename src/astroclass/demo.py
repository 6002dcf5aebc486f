"""``astroclass demo``: the whole tool on built-in data, in minutes, on a laptop.

It renders a synthetic star/galaxy set with GalSim and trains efficientnet_lite0 from scratch and fine-tuned
from its packaged ImageNet weights, each twice: with the paper's method (its preset: λ = 0.1, γ = 0, Adam;
fine-tuning = head epochs, then SGD on the last 7 layers) and with the modern recipe (symmetry augmentation,
AdamW with warm-up and cosine decay, label smoothing, an average of the weights, 8-fold test-time
augmentation; fine-tuning the whole backbone), then writes the HTML report, whose first screen compares them.
The paper's backbones take a minute or more per run on a laptop CPU: name them with ``models``.
"""

from __future__ import annotations

import time
from pathlib import Path

from astroclass.errors import AstroclassError

DEMO_MODELS = ["efficientnet_lite0"]
DEMO_RECIPES = ["paper", "modern"]


def run_demo(output: str | Path = "demo-output", n: int = 1000, epochs: int = 5, models: list[str] | None = None,
             pretrained: list[str] | None = None, seed: int = 0, workers: int | None = None,
             progress: bool = True, recipes: list[str] | None = None) -> dict:
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
    exp = out / "experiment"
    opts = GridOptions(workers=workers, keep="best")
    blocks = ([{"models": models, "setups": ["scratch"]}] if models else []) + \
        ([{"models": pretrained, "setups": ["pretrained"]}] if pretrained else [])
    for recipe in recipes or DEMO_RECIPES:
        # λ, γ and the optimiser are each recipe's own: the paper's preset, or the modern recipe's AdamW
        for block in blocks:
            spec = GridSpec.from_dict({"name": "demo", "datasets": {"SG": str(data.resolve())}, "maxnorm": [0.0],
                                       "seeds": [seed], "train": {**train, "recipe": recipe}, **block},
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
