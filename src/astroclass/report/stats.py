"""Beyond the paper: test-set metrics of the chosen settings, intervals over seeds, paired tests,
and the paper's four questions answered from an experiment's own numbers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from astroclass.metrics import SEEDS_INTERVAL, seeds_and_images_interval, seeds_interval
from astroclass.modelnames import display_name
from astroclass.report.tables import OPT_SHORT, Choice, Tables


def load_predictions(experiment: Path, run_id: str) -> dict[str, np.ndarray] | None:
    path = experiment / "runs" / run_id / "predictions.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def summarise_choice(ch: Choice, experiment: Path | None = None) -> dict[str, Any]:
    """Val and test metrics of a chosen setting over its seeds: mean, std and a 95% interval of the test accuracy
    (one seed: Wilson's over the test images; several: :data:`~astroclass.metrics.SEEDS_INTERVAL`, from the
    runs' saved predictions in ``experiment``, or without them Student-t over the seeds joined with Wilson's)."""
    def vals(split: str, name: str) -> list[float]:
        return [float(r.metrics[split][name]) for r in ch.runs if name in r.metrics.get(split, {})]

    out: dict[str, Any] = {"n_seeds": len(ch.runs), "setting": ch.setting}
    for split in ("val", "test"):
        for name in ("accuracy", "balanced_accuracy", "macro_f1", "ece"):
            v = vals(split, name)
            out[f"{split}_{name}"] = float(np.mean(v)) if v else float("nan")
            out[f"{split}_{name}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
    thr = [r.metrics.get("threshold") or {} for r in ch.runs]
    for key, get in (("test_roc_auc", lambda t: t.get("test_roc_auc")), ("test_pr_auc", lambda t: t.get("test_pr_auc")),
                     ("threshold_test_balanced_accuracy", lambda t: (t.get("test") or {}).get("balanced_accuracy"))):
        v = [float(x) for t in thr if (x := get(t)) is not None]
        out[key] = float(np.mean(v)) if v else float("nan")
    if len(ch.runs) == 1:
        ci = ch.runs[0].metrics.get("test", {}).get("accuracy_ci95") or [float("nan")] * 2
        out["test_accuracy_ci95"] = (float(ci[0]), float(ci[1]))
        out["ci_kind"] = "Wilson interval over test images"
    else:
        correct = _test_correctness(experiment, ch.runs) if experiment is not None else None
        if correct is not None:
            out["test_accuracy_ci95"] = seeds_and_images_interval(correct)
            out["ci_kind"] = f"over {len(ch.runs)} seeds: {SEEDS_INTERVAL}"
        else:
            n = int(min((r.metrics.get("test") or {}).get("n", 0) for r in ch.runs))
            out["test_accuracy_ci95"] = seeds_interval(vals("test", "accuracy"), n)
            out["ci_kind"] = (f"Student-t over {len(ch.runs)} seeds ({len(ch.runs) - 1} degrees of freedom), joined "
                              f"with the Wilson interval over the test images")
    return out


def _test_correctness(experiment: Path, runs: list) -> np.ndarray | None:
    """(runs, test images) whether each run got each test image right, where every run's predictions are saved
    on the same test images; else None."""
    rows, index = [], None
    for r in runs:
        pred = load_predictions(experiment, r.id)
        if pred is None or "test_probs" not in pred:
            return None
        if index is None:
            index = pred["test_index"]
        elif not np.array_equal(index, pred["test_index"]):
            return None
        rows.append(pred["test_probs"].argmax(1) == pred["test_labels"])
    return np.array(rows) if rows else None


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test on paired correctness: a binomial test on the discordant pairs."""
    from scipy.stats import binomtest

    n01 = int(np.sum(correct_a & ~correct_b))  # a right, b wrong
    n10 = int(np.sum(~correct_a & correct_b))
    p = 1.0 if n01 + n10 == 0 else float(binomtest(n01, n01 + n10, 0.5).pvalue)
    return {"a_only": n01, "b_only": n10, "p_value": p}


def ranked_cells(tables: Tables, dataset: str) -> list[tuple[str, str, Choice]]:
    """(model, setup, Table-8 choice) of a dataset, best first (ties: model name, then setup order)."""
    out = []
    for m in tables.models:
        for s in tables.setups:
            ch = tables.best_overall((dataset, m, s))
            if ch is not None:
                out.append((m, s, ch))
    out.sort(key=lambda t: (-t[2].value, display_name(t[0]), tables.setups.index(t[1])))
    return out


def significance(tables: Tables, experiment: Path, alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """Per dataset: is the best model significantly better than the runner-up model on the test set?

    The best (model, setup) cell by validation accuracy is compared with the best cell of any
    other model, on the same test images, with the exact McNemar test (seed by seed where both
    have the seed; the first shared seed is tested).
    """
    out = {}
    for d in tables.datasets:
        ranked = ranked_cells(tables, d)
        if not ranked:
            continue
        best = ranked[0]
        runner = next((c for c in ranked[1:] if c[0] != best[0]), None)
        res: dict[str, Any] = {"best": best, "runner_up": runner}
        if runner is None:
            res["text"] = f"{d}: only {display_name(best[0])} was trained; nothing to compare."
            out[d] = res
            continue
        res.update(paired_test(experiment, d, best[2].runs, runner[2].runs, f"{display_name(best[0])} ({best[1]})",
                               f"{display_name(runner[0])} ({runner[1]})", alpha))
        out[d] = res
    return out


def paired_test(experiment: Path, d: str, runs_a: list, runs_b: list, name_a: str, name_b: str,
                alpha: float = 0.05) -> dict[str, Any]:
    """The exact McNemar test of two cells' runs on the same test images (the first seed both have), with a
    sentence saying what it found (``text``); without ``p_value`` where no such pair of predictions exists."""
    seeds_a = {r.seed: r for r in runs_a}
    pair = next(((seeds_a[r.seed], r) for r in sorted(runs_b, key=lambda r: r.seed) if r.seed in seeds_a), None)
    preds = [load_predictions(experiment, r.id) for r in pair] if pair else [None, None]
    if pair is None or preds[0] is None or preds[1] is None:
        return {"text": f"{d}: {name_a} vs {name_b} not tested (no shared seed with saved test predictions)."}
    if not np.array_equal(preds[0]["test_index"], preds[1]["test_index"]):
        return {"text": f"{d}: {name_a} vs {name_b} not tested (their test sets differ)."}
    y = preds[0]["test_labels"]
    ca, cb = preds[0]["test_probs"].argmax(1) == y, preds[1]["test_probs"].argmax(1) == y
    res: dict[str, Any] = dict(mcnemar(ca, cb))
    acc_a, acc_b = float(ca.mean()), float(cb.mean())
    found = "significantly better than" if res["p_value"] < alpha and acc_a > acc_b else \
        "significantly worse than" if res["p_value"] < alpha else "not significantly different from"
    res["text"] = (f"{d}: the best model by validation accuracy, {name_a}, test accuracy {acc_a:.3f}, is {found} "
                   f"the runner-up {name_b}, {acc_b:.3f} (exact McNemar test on the same {len(y)} test images, "
                   f"seed {pair[0].seed}: {res['a_only']} images right only by the first, {res['b_only']} only by "
                   f"the second, p = {res['p_value']:.3g}).")
    return res


def verdict(d: str, summary: dict[str, Any], name: str, sig: dict[str, Any] | None) -> str:
    """One sentence for dataset d: which model to use and how sure that is."""
    lo, hi = summary["test_accuracy_ci95"]
    acc = f"test accuracy {summary['test_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"
    seeds = summary["n_seeds"]
    head = f"{d}: use {name}, {acc} ({'one seed' if seeds == 1 else f'{seeds} seeds'})"
    if not sig or sig.get("runner_up") is None:
        return f"{head}; it is the only model trained here, so nothing says another would not do better."
    other = sig.get("runner_up_name") or f"{display_name(sig['runner_up'][0])} ({sig['runner_up'][1]})"
    if "p_value" not in sig:
        return f"{head}; it was not tested against the runner-up {other} on the same images."
    p = sig["p_value"]
    if p < 0.05 and sig["a_only"] > sig["b_only"]:
        return (f"{head}; it is significantly better than the runner-up {other} on the test images "
                f"(McNemar p = {p:.2g}).")
    if p < 0.05:
        return (f"{head}, chosen on validation data. On the test images the runner-up {other} did significantly "
                f"better (McNemar p = {p:.2g}); that is information, not a choice: a test set used to choose is "
                f"no longer a held-out estimate. More validation data or seeds would tell the two apart.")
    return (f"{head}; the runner-up {other} is not significantly different (McNemar p = {p:.2g}): either will do, "
            f"and more test images or seeds would be needed to tell them apart.")


def four_questions(tables: Tables, dataset_info: dict[str, dict], summaries: dict,
                   scaling: str | None = None) -> dict[str, str]:
    """The paper's four questions, answered from this experiment's numbers (``scaling``: the answer
    measured from data-scaling curves, when the grid has a train_fraction axis)."""
    ans = {}
    # 1. which model for which problem
    lines = []
    winners = []
    for d in tables.datasets:
        ranked = ranked_cells(tables, d)
        if ranked:
            m, s, ch = ranked[0]
            winners.append(m)
            lines.append(f"{d}: {display_name(m)} ({s}, validation accuracy {ch.value:.3f})")
    if lines:
        common = max(set(winners), key=winners.count)
        lead = (f"{display_name(common)} is best on every dataset. " if winners.count(common) == len(winners) > 1 else
                f"{display_name(common)} wins on {winners.count(common)} of {len(winners)} dataset(s). ")
        ans["Which model is most appropriate to each problem?"] = lead + "; ".join(lines) + "."
    # 2. which hyperparameters
    per_model = []
    for m in tables.models:
        choices = [tables.best_overall((d, m, s)) for d in tables.datasets for s in tables.setups]
        picks = [c.setting for c in choices if c is not None]
        if picks:
            reg = max(set((p[0], p[1]) for p in picks), key=lambda r: [(p[0], p[1]) for p in picks].count(r))
            opt = max(set(p[2] for p in picks), key=lambda o: [p[2] for p in picks].count(o))
            n_reg = sum(1 for p in picks if (p[0], p[1]) == reg)
            n_opt = sum(1 for p in picks if p[2] == opt)
            per_model.append(f"{display_name(m)}: λ={reg[0]:g}, γ={reg[1]:g} in {n_reg} of {len(picks)} cells, "
                             f"{OPT_SHORT.get(opt, opt)} in {n_opt} of {len(picks)}")
    if per_model:
        ans["Which hyperparameters are best for each model and problem?"] = (
            "Most frequent winning settings (Table 10): " + "; ".join(per_model) + ". Table 4 and Table 6 show how "
            "much tuning regularisation and the optimiser gain over the preset.")
    # 3. when does ImageNet pre-training help
    if set(tables.setups) == {"scratch", "pretrained"}:
        parts = []
        for d in tables.datasets:
            diffs = []
            for m in tables.models:
                a, b = tables.best_overall((d, m, "pretrained")), tables.best_overall((d, m, "scratch"))
                if a and b:
                    diffs.append(a.value - b.value)
            if diffs:
                parts.append(f"{d}: pre-trained better for {sum(x > 0 for x in diffs)} of {len(diffs)} models "
                             f"(mean difference {np.mean(diffs):+.3f})")
        if parts:
            ans["When is ImageNet pre-training beneficial?"] = "; ".join(parts) + "."
    else:
        ans["When is ImageNet pre-training beneficial?"] = ("Not measured: this experiment has only the "
                                                            f"{tables.setups[0] if tables.setups else 'no'} setup.")
    # 4. number of classes and observations
    rows = []
    for d in tables.datasets:
        info = dataset_info.get(d)
        ranked = ranked_cells(tables, d)
        if info and ranked:
            k = len(info["class_names"])
            best = summaries.get((d, ranked[0][0], ranked[0][1]), {})
            rows.append((d, k, info["n_images"] * 0.8 / k, ranked[0][2].value,
                         best.get("test_balanced_accuracy", float("nan"))))
    if rows:
        desc = "; ".join(f"{d}: {k} classes, ~{per:.0f} training images per class, best validation accuracy {acc:.3f}, "
                         f"test balanced accuracy {bal:.3f}" for d, k, per, acc, bal in rows)
        if len(rows) >= 3:
            from scipy.stats import spearmanr

            rho_k = spearmanr([r[1] for r in rows], [r[4] for r in rows]).statistic
            rho_n = spearmanr([r[2] for r in rows], [r[4] for r in rows]).statistic
            trend = (f" Across the {len(rows)} datasets, the Spearman correlation of test balanced accuracy with the "
                     f"number of classes is {rho_k:+.2f} and with training images per class {rho_n:+.2f}"
                     f"{' (undefined where a quantity does not vary)' if any(map(math.isnan, (rho_k, rho_n))) else ''}"
                     f".")
        elif scaling:
            trend = ""
        else:
            trend = (" Too few datasets to measure a trend; a data-scaling grid (train_fraction axis) measures it on "
                     "one dataset.")
        ans["How do the number of classes and observations affect performance?"] = \
            (scaling + " " if scaling else "") + desc + "." + trend
    return ans
