"""The paper's Tables 2–12, computed from the runs of a results store.

Values are validation accuracies (the paper's metric). With several seeds, a setting's value is
the mean over the seeds that every setting it is compared with has finished (a cell marked * left runs
on other seeds out). "Best" picks the highest value; ties (equal values) go to the setting
that comes first in the canonical order: λ ascending, then γ ascending, then optimiser in the
order rmsprop, adam, radam, sgd. Table 7 averages the epoch of the best validation loss over the
scratch runs of each (dataset, model, optimiser): the optimiser drives the whole of a scratch
run, while a fine-tuning run's long phase always uses SGD. A cell without runs is a gap (shown
as "–"), never a zero; every table states how many runs it rests on.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from astroclass.modelnames import display_name

OPT_ORDER = ("rmsprop", "adam", "radam", "sgd")
OPT_SHORT = {"rmsprop": "RM", "adam": "AD", "radam": "RA", "sgd": "SGD"}
SETUP_ORDER = ("scratch", "pretrained")
PRESET = (0.1, 0.0, "adam")
PAPER_DATASETS = ("EF-15", "EF-4", "EF-2", "MG", "SG")

Setting = tuple[float, float, str]  # (λ, γ, optimiser)
CellKey = tuple[str, str, str]  # (dataset, model, setup)


def setting_order(s: Setting) -> tuple:
    return (s[0], s[1], OPT_ORDER.index(s[2]) if s[2] in OPT_ORDER else len(OPT_ORDER))


AXIS_KEYS = ("dataset", "model", "setup", "l2", "maxnorm", "optimizer")
"""The paper's axes: the tables' rows, columns and settings."""


def pooled_keys() -> frozenset[str]:
    """Options over which runs are pooled as repeats of one setting: the seed, and the options that do not
    change what a run computes (device, evaluation batch size, fusion: the ones run ids leave out)."""
    from astroclass.experiments.spec import NOT_IN_ID

    return frozenset({"seed", *NOT_IN_ID})


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def variant_of(config: dict[str, Any]) -> tuple:
    """Every option of a run besides the paper's axes and the pooled ones, where it differs from its
    default, as sorted (key, value) pairs: runs are pooled in a table cell only when these are equal."""
    from astroclass.training import RunConfig

    defaults = RunConfig.defaults()
    skip = pooled_keys() | set(AXIS_KEYS)
    out = []
    for k in sorted((set(config) | set(defaults)) - skip):
        v = config.get(k, defaults.get(k))
        if k not in defaults or v != defaults[k]:
            out.append((k, _hashable(v)))
    return tuple(out)


RESOLVED_DEFAULTS = {"precision": "fp32", "storage": "memory"}
"""What a run resolved to that changes its numbers though its options say the same (an amp: auto run is bf16 on a
GPU and fp32 on most CPUs; a streamed run visits its images in another order), with the value a variant leaves
out."""


def resolved_of(metrics: dict[str, Any]) -> tuple:
    """A run's :data:`RESOLVED_DEFAULTS` facts where they differ from the defaults, as (key, value) pairs."""
    amp = ((metrics.get("environment") or {}).get("speed") or {}).get("amp")
    out = []
    if amp:
        out.append(("precision", str(amp)))
    if metrics.get("storage") == "stream":
        out.append(("storage", "stream"))
    return tuple(out)


def without_fraction(variant: tuple) -> tuple:
    """A variant less its train_fraction: variants equal but for it are points of one data-scaling curve."""
    return tuple((k, v) for k, v in variant if k != "train_fraction")


def variant_values(variant: tuple, keys: Sequence[str]) -> dict[str, Any]:
    """The variant's value of each of ``keys``, the default where the variant leaves it out."""
    from astroclass.training import RunConfig

    d = dict(variant)
    return {k: d.get(k, RESOLVED_DEFAULTS.get(k, RunConfig.defaults().get(k))) for k in keys}


def variant_text(variant: tuple, keys: Sequence[str] | None = None) -> str:
    """``key=value, ...`` of a variant (only ``keys``, filled with defaults, when given). A recipe stands for
    the options it sets: ``recipe=modern`` names only the options that differ from the recipe's values."""
    from astroclass.runconfig import RECIPES
    from astroclass.training import RunConfig

    values = variant_values(variant, keys) if keys is not None else dict(variant)
    recipe = dict(variant).get("recipe", "paper")
    if "recipe" in values and recipe in RECIPES:
        own = {**RunConfig.defaults(), **RECIPES[recipe]}
        values = {k: v for k, v in values.items() if k == "recipe" or k not in own or _hashable(own[k]) != v}
    return ", ".join(f"{k}={v}" for k, v in values.items())


def differing_keys(variants: Sequence[tuple]) -> list[str]:
    """The options whose value is not the same in every one of ``variants``."""
    keys = sorted({k for v in variants for k, _ in v})
    return [k for k in keys if len({dict(v).get(k, "\0default") for v in variants}) > 1]


@dataclass
class RunRow:
    """One done run, flattened for the tables."""

    id: str
    dataset: str
    model: str
    setup: str
    setting: Setting
    seed: int
    val_accuracy: float
    best_epoch: int
    metrics: dict[str, Any]
    config: dict[str, Any]

    @property
    def variant(self) -> tuple:
        """Runs pool as repeats only when these are equal: their options besides the axes and the seed, and what
        they resolved to (precision, storage order)."""
        return tuple(sorted(variant_of(self.config) + resolved_of(self.metrics)))

    @classmethod
    def from_store(cls, r: dict[str, Any]) -> RunRow:
        m = r["metrics"]
        return cls(r["id"], r["dataset"], r["model"], r["setup"], (float(r["l2"]), float(r["maxnorm"]), r["optimizer"]),
                   int(r["seed"]), float(m["val"]["accuracy"]), int(m.get("best_epoch", 0)), m, r["config"])


@dataclass
class Choice:
    """The winning setting of a cell, its value (mean over the seeds compared) and the runs behind it (those of
    the seeds compared); ``left_out``: runs of the compared settings on seeds not every setting has, which the
    comparison leaves out so that a setting with fewer finished seeds is not favoured (or disfavoured) by
    chance."""

    setting: Setting
    value: float
    runs: list[RunRow]
    left_out: int = 0


@dataclass
class Table:
    key: str
    title: str
    records: list[dict[str, Any]]
    n_runs: int
    columns: list[str]
    wide: Callable[[Table], tuple[list[str], list[list[str]]]] | None = None
    notes: list[str] = field(default_factory=list)

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.records:
            w.writerow({k: _csv_value(r.get(k)) for k in self.columns})
        return buf.getvalue()

    def grid(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the paper-like (wide) layout."""
        if self.wide is not None:
            return self.wide(self)
        return self.columns, [[fmt(r.get(c)) for c in self.columns] for r in self.records]

    def caption(self) -> str:
        note = f"{self.title} Rests on {self.n_runs} run(s)."
        return " ".join([note, *self.notes])

    def to_markdown(self) -> str:
        header, rows = self.grid()
        out = [f"**{self.key.replace('table', 'Table ')}**: {self.caption()}", "",
               "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out) + "\n"

    def to_latex(self) -> str:
        header, rows = self.grid()
        esc = _latex_escape
        out = ["\\begin{table}[ht]", "\\centering", f"\\caption{{{esc(self.caption())}}}",
               f"\\label{{tab:{self.key}}}", "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}", "\\hline",
               " & ".join(esc(h) for h in header) + " \\\\", "\\hline"]
        out += [" & ".join(esc(c) for c in r) + " \\\\" for r in rows]
        out += ["\\hline", "\\end{tabular}", "\\end{table}"]
        return "\n".join(out) + "\n"


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: "–" for a gap (None or NaN), fixed digits for floats."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _latex_escape(s: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"), ("–", "--"),
                 ("λ", "$\\lambda$"), ("γ", "$\\gamma$"), ("±", "$\\pm$"), ("−", "$-$")):
        s = s.replace(a, b)
    return s


# ---------------------------------------------------------------------------------------------
def base_variant(runs: Sequence[RunRow]) -> tuple:
    """The options the paper tables are computed for: among full-training-set variants, the one with the
    most runs (ties: the fewest non-default options, then the first in sorted order)."""
    from collections import Counter

    counts = Counter(r.variant for r in runs)
    full = [v for v in counts if "train_fraction" not in dict(v)] or list(counts)
    return min(full, key=lambda v: (-counts[v], len(v), repr(v))) if full else ()


class Tables:
    """All tables of one experiment's done runs of one variant (default: the base variant, see
    :func:`base_variant`). ``label`` names the variant's options in every table's caption, and ``columns``
    (option: value) are added to every record, so that a CSV says which options its numbers are for."""

    def __init__(self, runs: Sequence[RunRow], datasets: Sequence[str] | None = None, variant: tuple | None = None,
                 label: str = "", columns: dict[str, Any] | None = None):
        self.base_variant = base_variant(runs) if variant is None else variant
        self.label, self.columns = label, dict(columns or {})
        self.excluded = [r for r in runs if r.variant != self.base_variant]
        self.runs = [r for r in runs if r.variant == self.base_variant]
        seen_ds = list(dict.fromkeys(r.dataset for r in self.runs))
        self.datasets = [d for d in (datasets or seen_ds) if d in seen_ds] or seen_ds
        self.models = sorted({r.model for r in self.runs}, key=lambda m: display_name(m).lower())
        self.setups = [s for s in SETUP_ORDER if any(r.setup == s for r in self.runs)]
        cells: dict[CellKey, dict[Setting, list[RunRow]]] = defaultdict(lambda: defaultdict(list))
        for r in self.runs:
            cells[(r.dataset, r.model, r.setup)][r.setting].append(r)
        self.cells = cells

    # -- choices ---------------------------------------------------------------------------
    def best(self, key: CellKey, allowed: Callable[[Setting], bool]) -> Choice | None:
        """The allowed setting of a cell with the highest mean validation accuracy, compared over the seeds every
        allowed setting has (over all their runs where they share no seed)."""
        options = [(s, rs) for s, rs in self.cells.get(key, {}).items() if allowed(s)]
        if not options:
            return None
        options.sort(key=lambda o: setting_order(o[0]))
        common = set.intersection(*({r.seed for r in rs} for _, rs in options))
        if common:
            compared = [(s, [r for r in rs if r.seed in common]) for s, rs in options]
        else:
            compared = options
        left_out = sum(len(rs) for _, rs in options) - sum(len(rs) for _, rs in compared)
        s, rs = max(compared, key=lambda o: (sum(r.val_accuracy for r in o[1]) / len(o[1]), -compared.index(o)))
        return Choice(s, sum(r.val_accuracy for r in rs) / len(rs), rs, left_out)

    def preset(self, key: CellKey) -> Choice | None:
        return self.best(key, lambda s: s == PRESET)

    def best_regularisation(self, key: CellKey) -> Choice | None:
        return self.best(key, lambda s: s[2] == "adam")

    def best_optimizer(self, key: CellKey) -> Choice | None:
        return self.best(key, lambda s: s[:2] == PRESET[:2])

    def best_overall(self, key: CellKey) -> Choice | None:
        return self.best(key, lambda s: True)

    def keys(self) -> list[CellKey]:
        return [(d, m, s) for d in self.datasets for m in self.models for s in self.setups]

    # -- tables ----------------------------------------------------------------------------
    def _value_table(self, key: str, title: str, pick: Callable[[CellKey], Choice | None], settings: str = "",
                     candidates: Callable[[Setting], bool] = lambda s: True) -> Table:
        records, n = [], 0
        for k in self.keys():
            ch = pick(k)
            n += sum(len(rs) for s, rs in self.cells.get(k, {}).items() if candidates(s))
            rec = {"dataset": k[0], "model": display_name(k[1]), "setup": k[2],
                   "val_accuracy": ch.value if ch else float("nan"), "n_runs": len(ch.runs) if ch else 0,
                   "left_out": ch.left_out if ch else 0}
            if ch:
                rec.update(l2_lambda=ch.setting[0], maxnorm_gamma=ch.setting[1], optimizer=ch.setting[2])
            records.append(rec)
        cols = ["dataset", "model", "setup", "val_accuracy", "n_runs", "left_out"]
        extra = {"reg": ["l2_lambda", "maxnorm_gamma"], "opt": ["optimizer"],
                 "all": ["l2_lambda", "maxnorm_gamma", "optimizer"]}
        cols[4:4] = extra.get(settings, [])

        def cell(r):
            v = fmt(r["val_accuracy"]) + ("*" if r.get("left_out") else "")
            if settings == "reg" and "l2_lambda" in r:
                v += f" ({r['l2_lambda']:g},{r['maxnorm_gamma']:g})"
            if settings == "opt" and "optimizer" in r:
                v += f" ({OPT_SHORT.get(r['optimizer'], r['optimizer'])})"
            return v

        table = Table(key, title, records, n, cols, wide=lambda t: self._wide(t.records, cell))
        if any(r["left_out"] for r in records):
            table.notes.append("*: the settings compared in this cell have different seeds finished; they are compared "
                               "over the seeds all of them have (left_out: the runs on other seeds).")
        return table

    def _diff_table(self, key: str, title: str, a: Table, b: Table) -> Table:
        records = []
        for ra, rb in zip(a.records, b.records):
            d = ra["val_accuracy"] - rb["val_accuracy"]
            records.append({"dataset": ra["dataset"], "model": ra["model"], "setup": ra["setup"], "difference": d})
        return Table(key, title, records, max(a.n_runs, b.n_runs), ["dataset", "model", "setup", "difference"],
                     wide=lambda t: self._wide(t.records, lambda r: fmt(r["difference"])))

    def _wide(self, records: list[dict], cell: Callable[[dict], str]) -> tuple[list[str], list[list[str]]]:
        by = {(r["dataset"], r["model"], r["setup"]): r for r in records}
        header = ["Dataset"] + [f"{display_name(m)} {s}" for m in self.models for s in self.setups]
        rows = [[d] + [cell(by[(d, display_name(m), s)]) if (d, display_name(m), s) in by else "–"
                       for m in self.models for s in self.setups] for d in self.datasets]
        return header, rows

    def table7(self) -> Table:
        records, n = [], 0
        opts = sorted({r.setting[2] for r in self.runs}, key=lambda o: OPT_ORDER.index(o) if o in OPT_ORDER else 9)
        for d in self.datasets:
            for m in self.models:
                for o in opts:
                    eps = [r.best_epoch for r in self.runs
                           if (r.dataset, r.model, r.setup, r.setting[2]) == (d, m, "scratch", o)]
                    n += len(eps)
                    records.append({"dataset": d, "model": display_name(m), "optimizer": o,
                                    "mean_epochs": sum(eps) / len(eps) if eps else float("nan"), "n_runs": len(eps)})

        def wide(t: Table):
            by = {(r["dataset"], r["model"], r["optimizer"]): r for r in t.records}
            header = ["Dataset"] + [f"{display_name(m)} {OPT_SHORT.get(o, o)}" for m in self.models for o in opts]
            rows = [[d] + [fmt(by[(d, display_name(m), o)]["mean_epochs"], 2) for m in self.models for o in opts]
                    for d in self.datasets]
            return header, rows

        return Table("table7",
                     "Mean epochs to convergence (epoch of best validation loss) per optimiser, scratch runs.",
                     records, n, ["dataset", "model", "optimizer", "mean_epochs", "n_runs"], wide=wide)

    def ranking(self, key: str, setup: str, t8: Table) -> Table:
        records = []
        for d in self.datasets:
            rows = [r for r in t8.records
                    if r["dataset"] == d and r["setup"] == setup and not math.isnan(r["val_accuracy"])]
            rows.sort(key=lambda r: (-r["val_accuracy"], r["model"]))
            records += [{"dataset": d, "rank": i + 1, "model": r["model"], "val_accuracy": r["val_accuracy"]}
                        for i, r in enumerate(rows)]
        n = sum(len(rs) for k, v in self.cells.items() if k[2] == setup for rs in v.values())
        how = "trained from scratch" if setup == "scratch" else "pre-trained on ImageNet"
        title = f"Models ranked by best validation accuracy (Table 8), {how}."

        def wide(t: Table):
            depth = max([r["rank"] for r in t.records], default=0)
            rows = []
            for i in range(1, depth + 1):
                row = []
                for d in self.datasets:
                    hit = [r for r in t.records if r["dataset"] == d and r["rank"] == i]
                    row.append(f"{hit[0]['model']} ({hit[0]['val_accuracy']:.3f})" if hit else "–")
                rows.append(row)
            return list(self.datasets), rows

        return Table(key, title, records, n, ["dataset", "rank", "model", "val_accuracy"], wide=wide)

    def all(self) -> dict[str, Table]:
        t2 = self._value_table("table2", "Validation accuracy at the preset λ=0.1, γ=0, Adam.", self.preset,
                               candidates=lambda s: s == PRESET)
        t3 = self._value_table("table3",
                               "Best validation accuracy over (λ, γ) with Adam; winning (λ, γ) in parentheses.",
                               self.best_regularisation, "reg", lambda s: s[2] == "adam")
        t5 = self._value_table("table5",
                               "Best validation accuracy over optimisers at λ=0.1, γ=0; winner in parentheses.",
                               self.best_optimizer, "opt", lambda s: s[:2] == PRESET[:2])
        t8 = self._value_table("table8", "Best validation accuracy over all settings.", self.best_overall, "all")
        t10 = Table("table10", "Settings (λ, γ, optimiser) behind Table 8.", t8.records, t8.n_runs,
                    ["dataset", "model", "setup", "l2_lambda", "maxnorm_gamma", "optimizer"],
                    wide=lambda t: self._wide(t.records, _settings_cell))
        out = {"table2": t2, "table3": t3,
               "table4": self._diff_table("table4", "Table 3 − Table 2: gain from tuning regularisation.", t3, t2),
               "table5": t5,
               "table6": self._diff_table("table6", "Table 5 − Table 2: gain from choosing the optimiser.", t5, t2),
               "table7": self.table7(), "table8": t8,
               "table9": self._diff_table("table9", "Table 8 − Table 2: gain from tuning everything.", t8, t2),
               "table10": t10,
               "table11": self.ranking("table11", "scratch", t8), "table12": self.ranking("table12", "pretrained", t8)}
        for t in out.values():
            self.label_table(t)
        return out

    def label_table(self, t: Table) -> Table:
        """Say in ``t``'s caption and records which options its runs have (when this is one of several variants)."""
        if self.label:
            t.notes.append(f"Runs with {self.label}.")
        if self.columns:
            t.records = [{**r, **self.columns} for r in t.records]
            t.columns = t.columns + [k for k in self.columns if k not in t.columns]
        return t


def _settings_cell(r: dict) -> str:
    """Table 10's cell: λ, γ, optimiser of Table 8's choice ("–" for a gap)."""
    if "optimizer" not in r:
        return "–"
    return f"{r['l2_lambda']:g}, {r['maxnorm_gamma']:g}, {OPT_SHORT.get(r['optimizer'], r['optimizer'])}"


# ---------------------------------------------------------------------------------------------
# the paper's published values

REFERENCE_FILES = {"table2": "table2_preset.csv", "table3": "table3_best_regularization.csv",
                   "table5": "table5_best_optimizer.csv", "table7": "table7_epochs_to_convergence.csv",
                   "table8": "table8_best_overall.csv", "table10": "table10_best_settings.csv"}


def paper_reference(table: str) -> list[dict[str, str]]:
    text = resources.files("astroclass").joinpath(f"reference/{REFERENCE_FILES[table]}").read_text()
    return list(csv.DictReader(io.StringIO(text)))


def compare_with_paper(tables: dict[str, Table]) -> dict[str, Table]:
    """Ours, the paper's and the difference, for cells whose dataset short name and model the paper has."""
    out = {}
    for key, value_col in (("table2", "val_accuracy"), ("table3", "val_accuracy"), ("table5", "val_accuracy"),
                           ("table8", "val_accuracy"), ("table7", "mean_epochs")):
        ref = paper_reference(key)
        second = "optimizer" if key == "table7" else "setup"
        paper = {(r["dataset"], r["model"], r[second]): float(r[value_col]) for r in ref}
        records = []
        for r in tables[key].records:
            k = (r["dataset"], r["model"], r[second])
            if k in paper and not math.isnan(r[value_col]):
                records.append({"dataset": k[0], "model": k[1], second: k[2], "ours": r[value_col],
                                "paper": paper[k], "difference": r[value_col] - paper[k]})
        if records:
            out[key] = Table(f"{key}_vs_paper", f"{key.replace('table', 'Table ')}: ours vs the paper's published "
                             f"{'epochs' if key == 'table7' else 'validation accuracy'}.", records, tables[key].n_runs,
                             ["dataset", "model", second, "ours", "paper", "difference"])
    return out
