"""``astroclass report``: tables, statistics and plots of an experiment, as files and one HTML page.

The report reads only the experiment folder (its store and the runs' saved predictions, plus the
prepared datasets for the image gallery when they are still there); it never trains. Nothing
time-dependent is written, so the same store gives the same report, byte for byte.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from astroclass.errors import AstroclassError
from astroclass.experiments.runner import open_experiment
from astroclass.experiments.store import first_line
from astroclass.fileio import atomic_write_text
from astroclass.metrics import SEEDS_INTERVAL
from astroclass.modelnames import display_name
from astroclass.report import plots
from astroclass.report.scaling import scaling_answer, scaling_curves
from astroclass.report.stats import (
    four_questions,
    load_predictions,
    paired_test,
    ranked_cells,
    significance,
    summarise_choice,
    verdict,
)
from astroclass.report.tables import (
    OPT_SHORT,
    RunRow,
    Table,
    Tables,
    base_variant,
    compare_with_paper,
    differing_keys,
    fmt,
    variant_text,
    variant_values,
    without_fraction,
)


def _precisions(done: list) -> str:
    """Which arithmetic the runs trained in, as a sentence (every run records it in environment.speed.amp)."""
    from collections import Counter

    speeds = [(r.metrics.get("environment") or {}).get("speed") for r in done]
    names = {None: "fp32", "bfloat16": "bf16 autocast"}
    kinds = Counter(names.get(s.get("amp"), str(s.get("amp"))) for s in speeds if s)
    if not kinds:
        return ""
    parts = ", ".join(f"{n} in {k}" for k, n in sorted(kinds.items()))
    return (f"Precision: {parts}; under bf16 autocast the head, the logits, the losses, early stopping and every "
            f"metric are computed in fp32.")


def _operating_point_rows(chosen: dict) -> list[list[str]]:
    """Per dataset's chosen model: the test accuracy and balanced accuracy of its two validation-chosen decision
    rules, mean over its runs (runs from before the rules have none and are left out)."""
    rows = []
    for d, (_g, m, s, ch) in chosen.items():
        pts = [r.metrics["operating_points"] for r in ch.runs if (r.metrics.get("operating_points") or {}).get("prior")]
        if not pts:
            continue
        cells = [fmt(float(np.mean([p[rule]["test"][key] for p in pts])))
                 for rule in ("accuracy", "balanced_accuracy") for key in ("accuracy", "balanced_accuracy")]
        rows.append([d, display_name(m), s, *cells])
    return rows


def _initialisations(done: list) -> str:
    """How the scratch runs' backbones were initialised, as a sentence (runs of versions before the option:
    timm's)."""
    from collections import Counter

    kinds = Counter(str((r.metrics.get("environment") or {}).get("init", "timm")) for r in done if r.setup == "scratch")
    if not kinds:
        return ""
    said = {"keras": "as Keras Applications builds them (Glorot-uniform kernels, Keras' batch norms)",
            "timm": "as timm builds them"}
    return "Scratch backbones: " + "; ".join(f"{n} run(s) initialised {said.get(k, k)}"
                                             for k, n in sorted(kinds.items())) + "."


def _finetuning(done: list) -> str:
    """How the pretrained runs fine-tuned, as a sentence: which layers phase 2 trained, and how frozen batch
    norms normalised (runs of versions before these options: params:N, moving statistics)."""
    from collections import Counter

    kinds: Counter[tuple[str, str, str]] = Counter()
    for r in done:
        if r.setup != "pretrained":
            continue
        ft = (r.metrics.get("environment") or {}).get("finetune")
        if ft is None:
            n = r.config.get("unfreeze_layers", 7)
            ft = {"unfreeze": f"params:{n}", "frozen_bn": "moving"}
        kinds[(ft["unfreeze"], ft["frozen_bn"], ft.get("finetune_bn", "train"))] += 1
    if not kinds:
        return ""
    bn = {"batch": "batch statistics (Keras 2.2, as in the paper)", "moving": "their moving statistics"}
    count = {"keras": "the last layers as Keras counts them", "params": "the last modules with weights",
             "all": "the whole backbone"}
    parts = "; ".join(f"{n} run(s) unfroze {u} ({count[u.split(':')[0]]})"
                      + (" except its batch norms, which normalised on " if f == "frozen" else
                         ", frozen batch norms on ") + bn.get(b, b) for (u, b, f), n in sorted(kinds.items()))
    return f"Fine-tuning: {parts}."


def build_report(experiment: str | Path, output: str | Path) -> Path:
    """Write tables (Markdown, CSV, LaTeX), plots (PNG) and report.html to ``output``; returns the HTML path."""
    experiment, output = Path(experiment), Path(output)
    store = open_experiment(experiment, create=False)
    all_runs = store.runs()
    done = [RunRow.from_store(r) for r in all_runs if r["status"] == "done"]
    failed = [r for r in all_runs if r["status"] == "failed"]
    unfinished = [r for r in all_runs if r["status"] in ("pending", "running")]
    dataset_info = store.datasets()
    spec_order = list(dataset_info)
    try:
        import yaml

        spec_yaml = yaml.safe_load((experiment / "spec.yaml").read_text()) or {}
        spec_order = list(spec_yaml.get("datasets", {})) or spec_order
    except (OSError, ValueError):
        pass
    try:
        (output / "tables").mkdir(parents=True, exist_ok=True)
        (output / "plots").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AstroclassError(f"{output}: cannot write the report here ({exc.strerror or exc})") from None

    page = _Page(experiment)
    page.h1(f"astroclass report: {experiment.name}")
    page.p(f"{len(all_runs)} run(s) in the store: {len(done)} done, {len(failed)} failed, {len(unfinished)} not "
           f"finished. Accuracies are validation accuracies (the paper's metric) unless marked test. "
           f"{_precisions(done)} {_initialisations(done)} {_finetuning(done)}".replace("  ", " ").rstrip())
    if not done:
        page.h2("Nothing to report yet")
        page.p("No run has finished, so there are no tables. " +
               ("Run `astroclass grid run` on the spec to fill the store." if not failed else
                "Every recorded run failed; their errors are listed below."))
        _failures(page, failed)
        html_path = output / "report.html"
        atomic_write_text(html_path, page.render())
        store.close()
        return html_path

    groups = _variants(done, spec_order)
    group_summaries = [{k: summarise_choice(ch, experiment) for k in g.keys() if (ch := g.best_overall(k))}
                       for g in groups]
    tables, summaries = groups[0], group_summaries[0]
    all_tables = tables.all()
    vs_paper = compare_with_paper(all_tables)
    sig = significance(tables, experiment)
    curves = scaling_curves(done, tables.base_variant)
    answers = four_questions(tables, dataset_info, summaries, scaling_answer(curves) if curves else None)

    # -- the answer first: a picture and a sentence per dataset -------------------------------------
    several = len(groups) > 1
    pdir = output / "plots"
    chosen = {}  # dataset -> the best cell by validation accuracy over all option sets
    panels: dict[str, list[tuple[str, float, float, float, float, bool]]] = {}
    for d in dict.fromkeys(d for g in groups for d in g.datasets):
        best = [(g, *ranked[0]) for g in groups if (ranked := ranked_cells(g, d))]
        if best:
            chosen[d] = max(best, key=lambda b: (b[3].value, -groups.index(b[0])))
        panels[d] = [(f"{display_name(m)} {s}" + (f" [{_short(g.label)}]" if several else ""), sm["test_accuracy"],
                      *sm["test_accuracy_ci95"], ch.value, (g, m, s) == chosen[d][:3])
                     for gi, g in enumerate(groups) for m, s, ch in ranked_cells(g, d)
                     if (sm := group_summaries[gi].get((d, m, s))) and math.isfinite(sm["test_accuracy"])]
    page.h2("Which model should I use?")
    if any(panels.values()):
        page.img(plots.overview({d: r for d, r in panels.items() if r}, pdir / "overview.png"),
                 "Every trained model and setup" + (" and option set" if several else "") + " in order of "
                 "validation accuracy, on which the model is chosen (blue: the chosen one); each point is its test "
                 "accuracy with a 95% interval (" + CI_TEXT + "): a held-out estimate of how the model does, never "
                 "used to choose.")
    page.ul([verdict(d, group_summaries[groups.index(g)][(d, m, s)],
                     f"{display_name(m)} ({s}" + (f", {g.label})" if several else ")"),
                     _runner_up_test(experiment, d, chosen[d], groups) if several else sig.get(d))
             for d, (g, m, s, ch) in chosen.items()])

    # -- summary ----------------------------------------------------------------------------------
    page.h2("Summary")
    rows = []
    for d, (g, m, s, ch) in chosen.items():
        sm = group_summaries[groups.index(g)][(d, m, s)]
        lo, hi = sm["test_accuracy_ci95"]
        rows.append([d, display_name(m), s] + ([g.label] if several else []) +
                    [f"{ch.setting[0]:g}, {ch.setting[1]:g}, {OPT_SHORT.get(ch.setting[2], ch.setting[2])}",
                     fmt(ch.value), f"{fmt(sm['test_accuracy'])} [{fmt(lo)}, {fmt(hi)}]",
                     fmt(sm["test_balanced_accuracy"]), fmt(sm["test_macro_f1"]), str(sm["n_seeds"])])
    page.table(["dataset", "best model", "setup"] + (["options"] if several else []) +
               ["λ, γ, optimiser", "val acc", "test acc [95% interval]", "test balanced acc", "test macro-F1", "seeds"],
               rows,
               "The best model of each dataset (by validation accuracy, as the paper chooses), with its held-out test "
               "metrics. 95% intervals: " + CI_TEXT + ". Runs are pooled only when their options differ in nothing but "
               "the seed (and device, evaluation batch size, fusion), and they resolved to the same precision and "
               "storage order." +
               (" The options column says which option set the best runs had." if several else ""))
    points = _operating_point_rows(chosen)
    if points:
        page.table(["dataset", "best model", "setup", "accuracy rule: test acc", "test balanced acc",
                    "balanced rule: test acc", "test balanced acc"], points,
                   "Two decision rules from each chosen model, both chosen on the validation split alone (a prior "
                   "correction of its probabilities): the best plain accuracy (a pure catalogue) and the best "
                   "balanced accuracy (every class found); test metrics, mean over the chosen runs' seeds. "
                   "`astroclass predict --operating-point accuracy|balanced` applies one.")
    if several:
        page.p(f"The runs differ in options besides the paper's axes and the seed, so they form {len(groups)} option "
               f"sets that are never pooled: " + "; ".join(f"{g.label} ({len(g.runs)} run(s))" for g in groups) +
               f". The questions, the significance test and the plots below use the first ({tables.label}); each "
               f"option set has its own tables.")
    page.h3("The paper's four questions, as measured here")
    page.ul([f"<b>{html.escape(q)}</b> {html.escape(a)}" for q, a in answers.items()], raw=True)
    page.h3("Is the best model significantly better than the runner-up?")
    page.ul([res["text"] for res in sig.values()])
    # cells the grid asked for (some run of theirs is in the store) with no finished run; a model × setup
    # combination that no spec asked for (the demo fine-tunes one model only) is not missing
    asked = {(r["dataset"], r["model"], r["setup"]) for r in all_runs}
    missing = [f"{d} / {display_name(m)} / {s}" for d, m, s in tables.keys()
               if (d, m, s) in asked and (d, m, s) not in summaries]
    if unfinished or failed or missing:
        page.h3("What is missing")
        items = []
        if unfinished:
            items.append(f"{len(unfinished)} run(s) not finished (pending or running); tables show what exists.")
        if missing:
            items.append("cells with no finished run (gaps in the tables): " + ", ".join(missing))
        if failed:
            items.append(f"{len(failed)} failed run(s), listed at the end.")
        page.ul(items)

    # -- the paper's tables -----------------------------------------------------------------------
    page.h2("The paper's tables")
    if tables.label:
        page.p(f"Tables are computed from the runs with {tables.label}" +
               ("; the other option sets follow in their own sections." if several else "."))
    if curves:
        page.p("Runs that differ from these only in train_fraction are drawn as data-scaling curves (Plots).")
    for t in all_tables.values():
        _save_table(output, t)
        page.table_obj(t, _nothing_to_show(t, tables))
    if vs_paper:
        page.h2("Side by side with the paper")
        page.p("Where this experiment's dataset short names and models match the paper's (SG, MG, EF-2, EF-4, EF-15), "
               "our value, the paper's published value and the difference (ours − paper).")
        for t in vs_paper.values():
            _save_table(output, t)
            page.table_obj(t)

    # -- beyond the paper ---------------------------------------------------------------------------
    page.h2("Beyond the paper: test set, seeds, balanced metrics")
    beyond = _beyond_table(tables, summaries)
    _save_table(output, beyond)
    page.table_obj(beyond)

    for i, g in enumerate(groups[1:], start=2):
        page.h2(f"Option set {i}: runs with {g.label}")
        sub = f"set{i}_{_slug(g.label)}"[:80]
        for t in [*g.all().values(), _beyond_table(g, group_summaries[i - 1])]:
            _save_table(output, t, sub)
            page.table_obj(t)

    # -- plots -----------------------------------------------------------------------------------
    page.h2("Plots")
    for d, cs in curves.items():
        slug = _slug(d)
        page.img(plots.scaling(cs, f"{d}: data scaling", pdir / f"scaling_{slug}.png"),
                 f"{d}: test accuracy and balanced accuracy against training images per class (train_fraction axis; "
                 f"error bars: ±1 standard deviation over seeds).")
    for s in tables.setups:
        vals = {(d, m): ch.value for d in tables.datasets for m in tables.models
                if (ch := tables.best_overall((d, m, s)))}
        page.img(plots.heatmap(vals, tables.datasets, tables.models, f"Best validation accuracy, {s}",
                               pdir / f"heatmap_{s}.png"), f"Accuracy heatmap, {s} (Table 8).")
    pairs = [(d, display_name(m), a.value, b.value) for d in tables.datasets for m in tables.models
             if (a := tables.best_overall((d, m, "scratch"))) and (b := tables.best_overall((d, m, "pretrained")))]
    if pairs:
        page.img(plots.scratch_vs_pretrained(pairs, pdir / "scratch_vs_pretrained.png"),
                 "Scratch vs ImageNet pre-training: points above the diagonal favour pre-training.")
    for d in tables.datasets:
        ranked = ranked_cells(tables, d)
        if not ranked:
            continue
        m, s, ch = ranked[0]
        run = min(ch.runs, key=lambda r: r.seed)
        label = f"{d}: {display_name(m)} {s} (run {run.id}, seed {run.seed})"
        slug = _slug(d)
        hist = store.history(run.id)
        if hist:
            page.img(plots.learning_curves(hist, f"Learning curves, {label}", pdir / f"curves_{slug}.png"),
                     f"Learning curves of the best run of {d}.")
        test = run.metrics.get("test", {})
        classes = dataset_info.get(d, {}).get("class_names") or list(test.get("per_class", {}))
        if test.get("confusion_matrix"):
            page.img(plots.confusion(test["confusion_matrix"], classes, f"Test confusion matrix, {label}",
                                     pdir / f"confusion_{slug}.png"),
                     f"Confusion matrix (test) of the best run of {d}.")
        preds = load_predictions(experiment, run.id)
        if preds is not None and len(preds["test_labels"]):
            from astroclass.metrics import expected_calibration_error, reliability_bins

            probs, y = preds["test_probs"], preds["test_labels"]
            page.img(plots.reliability(reliability_bins(probs, y), expected_calibration_error(probs, y),
                                       f"Reliability (test), {label}", pdir / f"reliability_{slug}.png"),
                     f"Reliability diagram (test) of the best run of {d}.")
            _gallery(page, d, slug, label, preds, classes, dataset_info.get(d, {}), pdir)
        _accuracy_vs_snr(page, tables, d, slug, dataset_info.get(d, {}), experiment, pdir)
    _failures(page, failed)

    html_path = output / "report.html"
    atomic_write_text(html_path, page.render())
    store.close()
    return html_path


def _nothing_to_show(t: Table, tables: Tables) -> str:
    """Why a difference table shows only zeros (then it is folded away), or "" when it shows something."""
    diffs = [r["difference"] for r in t.records if isinstance(r.get("difference"), float)
             and math.isfinite(r["difference"])]
    if not diffs or any(v != 0 for v in diffs):
        return ""
    settings = {r.setting for r in tables.runs}
    why = "the grid has a single (λ, γ, optimiser) setting, so there is nothing to compare" if len(settings) == 1 \
        else "the setting compared against was the best one in every cell"
    return f"every difference is 0.000 because {why} (click to show the table)."


def _short(text: str, width: int = 36) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _slug(name: str) -> str:
    """A dataset name as a file-name part."""
    return "".join(c if c.isalnum() else "_" for c in name)


def _beyond_table(tables: Tables, summaries: dict) -> Table:
    """Table 8's choices on the test set (the report's main table beyond the paper)."""
    records = []
    for (d, m, s), sm in summaries.items():
        lo, hi = sm["test_accuracy_ci95"]
        records.append({
            "dataset": d, "model": display_name(m), "setup": s, "seeds": sm["n_seeds"],
            "val_accuracy": sm["val_accuracy"], "val_accuracy_std": sm["val_accuracy_std"],
            "test_accuracy": sm["test_accuracy"], "test_accuracy_std": sm["test_accuracy_std"],
            "test_ci_low": lo, "test_ci_high": hi, "test_balanced_accuracy": sm["test_balanced_accuracy"],
            "test_macro_f1": sm["test_macro_f1"], "test_ece": sm["test_ece"], "test_roc_auc": sm["test_roc_auc"],
            "test_pr_auc": sm["test_pr_auc"],
            "threshold_test_balanced_accuracy": sm["threshold_test_balanced_accuracy"]})
    t = Table("beyond", "Table 8's chosen settings on the held-out test set: mean ± std over seeds, 95% interval "
              "(" + CI_TEXT + "), balanced accuracy, macro-F1, expected calibration error; for two classes ROC-AUC, "
              "PR-AUC (positive class: the rarer in training) and balanced accuracy at the threshold chosen on "
              "validation.", records,
              sum(s["n_seeds"] for s in summaries.values()), list(records[0]) if records else [], wide=_beyond_wide)
    return tables.label_table(t)


CI_TEXT = ("for one seed, Wilson's over the test images; for several, " + SEEDS_INTERVAL +
           " (without saved predictions: Student-t over the seeds, joined with Wilson's)")
"""How the report's test-accuracy intervals are made, said in every caption that shows one."""


def _runner_up_test(experiment: Path, d: str, chosen: tuple, groups: list[Tables]) -> dict[str, Any]:
    """With several option sets: the chosen cell against the best other cell of any option set (the same model
    with other options counts), by validation accuracy, with the McNemar test on the same test images."""
    g, m, s, ch = chosen
    others = [(g2, m2, s2, ch2) for g2 in groups for m2, s2, ch2 in ranked_cells(g2, d) if (g2, m2, s2) != (g, m, s)]
    if not others:
        return {"runner_up": None}
    g2, m2, s2, ch2 = max(others, key=lambda c: (c[3].value, -groups.index(c[0])))
    name_b = f"{display_name(m2)} ({s2}, {g2.label})"
    return {"runner_up": (m2, s2), "runner_up_name": name_b,
            **paired_test(experiment, d, ch.runs, ch2.runs, f"{display_name(m)} ({s}, {g.label})", name_b)}


def _variants(done: list[RunRow], datasets: list[str]) -> list[Tables]:
    """One :class:`Tables` per option set (runs pooled only across seeds), the base variant first, then by
    number of runs. Variants that differ from the base only in train_fraction are left to the scaling curves."""
    from collections import Counter

    counts = Counter(r.variant for r in done)
    base = base_variant(done)
    others = [v for v in counts if v != base and without_fraction(v) != without_fraction(base)]
    order = [base] + sorted(others, key=lambda v: (-counts[v], repr(v)))
    if len(order) == 1:
        return [Tables(done, datasets, base, variant_text(base))]
    keys = differing_keys(order)
    return [Tables(done, datasets, v, variant_text(v, keys), variant_values(v, keys)) for v in order]


def _beyond_wide(t: Table):
    header = ["dataset", "model", "setup", "seeds", "val acc", "test acc", "test 95% interval", "test balanced acc",
              "test macro-F1", "test ECE", "test ROC-AUC", "test PR-AUC", "test balanced acc at val threshold"]
    rows = []
    for r in t.records:
        sd = "" if math.isnan(r["test_accuracy_std"]) else f" ± {r['test_accuracy_std']:.3f}"
        vsd = "" if math.isnan(r["val_accuracy_std"]) else f" ± {r['val_accuracy_std']:.3f}"
        rows.append([r["dataset"], r["model"], r["setup"], str(r["seeds"]), fmt(r["val_accuracy"]) + vsd,
                     fmt(r["test_accuracy"]) + sd, f"[{fmt(r['test_ci_low'])}, {fmt(r['test_ci_high'])}]",
                     fmt(r["test_balanced_accuracy"]), fmt(r["test_macro_f1"]), fmt(r["test_ece"]),
                     fmt(r["test_roc_auc"]), fmt(r["test_pr_auc"]), fmt(r["threshold_test_balanced_accuracy"])])
    return header, rows


def _gallery(page: _Page, d, slug, label, preds, classes, info, pdir: Path) -> None:
    from astroclass.data.prepared import PreparedDataset

    probs, y, idx = preds["test_probs"], preds["test_labels"], preds["test_index"]
    wrong = np.flatnonzero(probs.argmax(1) != y)
    if not len(wrong):
        page.p(f"{d}: no misclassified test image.")
        return
    order = wrong[np.argsort(-probs[wrong].max(1), kind="stable")][:12]
    path = Path(info.get("path", ""))
    if not path.is_file():
        page.p(f"{d}: gallery of misclassified images not drawn: the prepared dataset {path} is no longer there.")
        return
    with PreparedDataset(path) as ds:
        if ds.content_hash != info.get("content_hash"):
            page.p(f"{d}: gallery not drawn: {path} changed since the runs were recorded.")
            return
        imgs = list(ds.images(idx[order]))
        ids = [ds.ids[i] for i in idx[order]]
    def short(name: str, width: int = 16) -> str:
        return name if len(name) <= width else name[:width - 1] + "…"

    # the panels carry a number and the classes; the ids (long for survey objects) go in the table below
    caps = [f"#{k}\ntrue {short(classes[y[j]])}\npred {short(classes[probs[j].argmax()])} {probs[j].max():.2f}"
            for k, j in enumerate(order, start=1)]
    page.img(plots.gallery(imgs, caps, f"Most confidently misclassified test images, {label}",
                           pdir / f"gallery_{slug}.png"),
             f"The most confidently misclassified test images of the best run of {d}.")
    page.table(["#", "id", "true class", "predicted", "probability"],
               [[str(k), i, classes[y[j]], classes[probs[j].argmax()], f"{probs[j].max():.3f}"]
                for k, (i, j) in enumerate(zip(ids, order), start=1)],
               f"The objects in the gallery of {d}, by panel number.")


def _accuracy_vs_snr(page: _Page, tables: Tables, d: str, slug: str, info: dict, experiment: Path, pdir: Path,
                     bins: int = 6) -> None:
    """For synthetic datasets (true r-band S/N stored per object): test accuracy against S/N, per model."""
    from astroclass.data.prepared import PreparedDataset

    path = Path(info.get("path", ""))
    if not path.is_file():
        return
    with PreparedDataset(path) as ds:
        if "snr_r" not in ds.column_names() or ds.content_hash != info.get("content_hash"):
            return
        snr = ds.column("snr_r")
    curves = {}
    for m in tables.models:
        picks = [(s, ch) for s in tables.setups if (ch := tables.best_overall((d, m, s)))]
        if not picks:
            continue
        s, ch = max(picks, key=lambda p: p[1].value)
        run = min(ch.runs, key=lambda r: r.seed)
        preds = load_predictions(experiment, run.id)
        if preds is None or not len(preds["test_labels"]):
            continue
        x = snr[preds["test_index"]]
        correct = preds["test_probs"].argmax(1) == preds["test_labels"]
        edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
        which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
        xs, acc, cnt = [], [], []
        for b in range(len(edges) - 1):
            sel = which == b
            if sel.any():
                xs.append(float(np.median(x[sel])))
                acc.append(float(correct[sel].mean()))
                cnt.append(int(sel.sum()))
        curves[f"{display_name(m)} ({s})"] = (xs, acc, cnt)
    if curves:
        page.img(plots.accuracy_vs_truth(curves, "true r-band signal-to-noise ratio", f"{d}: test accuracy against S/N "
                                         f"(bins of equal count)", pdir / f"accuracy_vs_snr_{slug}.png"),
                 f"{d}: test accuracy of each model's best run against the true S/N of the objects (synthetic data): "
                 f"how survey scientists judge star/galaxy separation, which gets harder for faint objects.")


def _failures(page: _Page, failed: list[dict]) -> None:
    if not failed:
        return
    page.h2("Failed runs")
    page.table(["run", "dataset", "model", "setup", "λ", "γ", "optimiser", "seed", "attempts", "error"],
               [[r["id"], r["dataset"], display_name(r["model"]), r["setup"], f"{r['l2']:g}", f"{r['maxnorm']:g}",
                 r["optimizer"], str(r["seed"]), str(r["attempts"]), first_line(r["error"])[:200]]
                for r in failed], "")


def _save_table(output: Path, t: Table, folder: str = "") -> None:
    where = output / "tables" / folder
    where.mkdir(parents=True, exist_ok=True)
    for ext, text in (("md", t.to_markdown()), ("csv", t.to_csv()), ("tex", t.to_latex())):
        atomic_write_text(where / f"{t.key}.{ext}", text)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;
line-height:1.4;padding:0 12px} h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0 4px;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left} caption{caption-side:top;text-align:left;
font-size:13px;color:#444;padding:4px 0} figure{margin:12px 0} figcaption{font-size:13px;color:#444}
img{max-width:100%;border:1px solid #eee} .scroll{overflow-x:auto}
details>summary{cursor:pointer;color:#555;font-size:13px;margin:6px 0}
"""


class _Page:
    """A self-contained HTML page: inline CSS, images as data URIs, no scripts, no network."""

    def __init__(self, experiment: Path):
        self.parts: list[str] = []
        self.title = f"astroclass report: {experiment.name}"

    def h1(self, t: str) -> None:
        self.parts.append(f"<h1>{html.escape(t)}</h1>")

    def h2(self, t: str) -> None:
        self.parts.append(f"<h2>{html.escape(t)}</h2>")

    def h3(self, t: str) -> None:
        self.parts.append(f"<h3>{html.escape(t)}</h3>")

    def p(self, t: str) -> None:
        self.parts.append(f"<p>{html.escape(t)}</p>")

    def ul(self, items: list[str], raw: bool = False) -> None:
        self.parts.append("<ul>" + "".join(f"<li>{i if raw else html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, header: list[str], rows: list[list[str]], caption: str) -> None:
        out = ['<div class="scroll"><table>']
        if caption:
            out.append(f"<caption>{html.escape(caption)}</caption>")
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows]
        out.append("</table></div>")
        self.parts.append("".join(out))

    def table_obj(self, t: Table, collapsed: str = "") -> None:
        """A table; with ``collapsed``, folded away under that line (a table with nothing to show)."""
        header, rows = t.grid()
        name = t.key.replace("table", "Table ").replace("_vs_paper", " vs paper")
        if collapsed:
            self.parts.append(f"<details><summary>{html.escape(name)}: {html.escape(collapsed)}</summary>")
        self.table(header, rows, f"{name}: {t.caption()}")
        if collapsed:
            self.parts.append("</details>")

    def img(self, path: Path, caption: str) -> None:
        data = base64.b64encode(Path(path).read_bytes()).decode()
        self.parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def render(self) -> str:
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><meta name=\"viewport\" content=\"width=device-width\">"
                f"<style>{_CSS}</style></head><body>\n" + "\n".join(self.parts) + "\n</body></html>\n")

