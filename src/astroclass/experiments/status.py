"""What a grid has done so far, and flat exports of its results."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from astroclass.errors import AstroclassError
from astroclass.experiments.spec import GridSpec
from astroclass.experiments.store import Store, first_line, run_label, status_counts
from astroclass.fileio import atomic_output

EXPORT_COLUMNS = ["id", "dataset", "model", "setup", "l2", "maxnorm", "optimizer", "seed", "status", "attempts",
                  "host", "device", "seconds", "val_accuracy", "val_balanced_accuracy", "val_macro_f1",
                  "test_accuracy", "test_accuracy_ci_low", "test_accuracy_ci_high", "test_balanced_accuracy",
                  "test_macro_f1", "test_ece", "best_epoch", "epochs_run", "train_images_per_s", "error"]


def grid_status(spec: GridSpec, store: Store, slots: int = 1) -> dict[str, Any]:
    """Counts by status, per-dataset progress, an ETA from measured run times, failures."""
    expanded = spec.expand()
    ids = [r.id for r in expanded]
    runs = store.runs(ids=ids)
    counts = status_counts(runs)
    counts["pending"] += len(set(ids)) - len(runs)  # runs of the spec not yet added to the store
    per_ds: dict[str, dict[str, int]] = {d: {"done": 0, "total": 0} for d in spec.datasets}
    for spec_run in expanded:
        per_ds[spec_run.dataset]["total"] += 1
    for r in runs:
        if r["status"] == "done" and r["dataset"] in per_ds:
            per_ds[r["dataset"]]["done"] += 1
    mean = store.mean_run_seconds()
    remaining = counts["pending"] + counts["running"]
    eta = mean * remaining / max(1, min(slots, remaining)) if mean is not None else None  # no more at once than left
    failures = [{"id": r["id"], "run": run_label(r), "attempts": r["attempts"], "error": first_line(r["error"])}
                for r in runs if r["status"] == "failed"]
    return {"total": len(ids), "counts": counts, "datasets": per_ds, "mean_run_seconds": mean, "eta_seconds": eta,
            "failures": failures}


def flat_rows(store: Store) -> list[dict[str, Any]]:
    rows = []
    for r in store.runs():
        m = r["metrics"]
        val, test = m.get("val", {}), m.get("test", {})
        ci = test.get("accuracy_ci95") or [None, None]
        rows.append({
            "id": r["id"], "dataset": r["dataset"], "model": r["model"], "setup": r["setup"], "l2": r["l2"],
            "maxnorm": r["maxnorm"], "optimizer": r["optimizer"], "seed": r["seed"], "status": r["status"],
            "attempts": r["attempts"], "host": r["host"], "device": r["device"], "seconds": r["seconds"],
            "val_accuracy": val.get("accuracy"), "val_balanced_accuracy": val.get("balanced_accuracy"),
            "val_macro_f1": val.get("macro_f1"), "test_accuracy": test.get("accuracy"),
            "test_accuracy_ci_low": ci[0], "test_accuracy_ci_high": ci[1],
            "test_balanced_accuracy": test.get("balanced_accuracy"), "test_macro_f1": test.get("macro_f1"),
            "test_ece": test.get("ece"), "best_epoch": m.get("best_epoch"), "epochs_run": m.get("epochs_run"),
            "train_images_per_s": m.get("train_images_per_s"), "error": first_line(r["error"]),
        })
    return rows


def export(store: Store, output: str | Path) -> Path:
    """All runs as one flat table: .csv, or .parquet (needs pyarrow)."""
    output = Path(output)
    if output.suffix not in (".csv", ".parquet"):
        raise AstroclassError(f"{output}: export to .csv or .parquet")
    rows = flat_rows(store)
    if output.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise AstroclassError("Parquet export needs pyarrow (pip install pyarrow); CSV works without it") from None
        with atomic_output(output) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
    else:
        with atomic_output(output) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=EXPORT_COLUMNS)
            w.writeheader()
            w.writerows(rows)
    return output
