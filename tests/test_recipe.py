"""Recipes (paper, modern) and wall-clock budgets."""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest
import torch

from astroclass.errors import AstroclassError
from astroclass.experiments.spec import GridSpec
from astroclass.runconfig import RECIPES, RunConfig, apply_recipe, parse_duration
from astroclass.training import train


def test_the_modern_recipe_fills_what_a_run_does_not_set_itself():
    modern = RunConfig.from_dict({"dataset": "d.h5", "recipe": "modern"})
    for key, value in RECIPES["modern"].items():
        assert getattr(modern, key) == value, key
    # no model named: efficientnet_lite0, whose ImageNet weights install with the package, fine-tuned
    assert (modern.model, modern.setup, modern.resolved_weights()) == ("efficientnet_lite0", "pretrained", "package")
    # explicit options win; a backbone whose weights would need a download trains from scratch
    mine = RunConfig.from_dict({"dataset": "d.h5", "recipe": "modern", "optimizer": "adam", "model": "resnet18",
                                "augment": False})
    assert (mine.optimizer, mine.augment, mine.setup, mine.schedule) == ("adam", False, "scratch", "cosine")
    assert RunConfig.from_dict({"dataset": "d.h5", "recipe": "modern", "model": "resnet18",
                                "weights": "w.safetensors"}).setup == "pretrained"
    # the paper recipe is every default; a saved config (every option written) reads back as it was
    assert RunConfig.from_dict({"dataset": "d.h5"}).to_dict() == RunConfig(dataset="d.h5").to_dict()
    assert RunConfig.from_dict(modern.to_dict()) == modern
    assert apply_recipe({"recipe": "paper", "l2": 0.1}) == {"recipe": "paper", "l2": 0.1}
    with pytest.raises(AstroclassError, match="run config: recipe must be one of"):
        RunConfig.from_dict({"dataset": "d.h5", "recipe": "fancy"})
    with pytest.raises(AstroclassError, match="finetune_bn must be train or frozen, got 'sometimes'"):
        RunConfig.from_dict({"dataset": "d.h5", "finetune_bn": "sometimes"})


def test_a_grid_crosses_recipes_each_with_its_own_optimiser_unless_the_spec_names_one(tmp_path):
    spec = GridSpec.from_dict({"datasets": {"SG": "sg.h5"}, "models": ["test_resnet"],
                               "axes": {"recipe": ["paper", "modern"]}}, "t.yaml", tmp_path)
    by_recipe = {r.config["recipe"]: r.config for r in spec.expand()}
    assert (by_recipe["paper"]["optimizer"], by_recipe["paper"]["l2"]) == ("adam", 0.1)  # the paper preset
    assert by_recipe["paper"]["augment"] is False and by_recipe["paper"]["ema"] == 0.0
    m = by_recipe["modern"]
    assert (m["optimizer"], m["l2"], m["augment"], m["ema"], m["tta"]) == ("adamw", 0.0, True, 0.998, True)
    assert m["setup"] == "scratch"  # the grid's setups axis (default: scratch) is the grid's to say
    named = GridSpec.from_dict({"datasets": {"SG": "sg.h5"}, "models": ["test_resnet"], "optimizers": ["radam"],
                                "l2": [0.0], "axes": {"recipe": ["paper", "modern"]}}, "t.yaml", tmp_path)
    assert {(r.config["recipe"], r.config["optimizer"], r.config["l2"]) for r in named.expand()} == \
        {("paper", "radam", 0.0), ("modern", "radam", 0.0)}
    # a spec that leaves the axes to the recipe saves without them, and reads back to the same runs
    again = GridSpec.from_dict(__import__("yaml").safe_load(spec.to_yaml()), "again", tmp_path)
    assert [r.id for r in again.expand()] == [r.id for r in spec.expand()]


def test_durations_are_read_in_seconds_minutes_or_hours():
    assert [parse_duration(t) for t in ("90", "90s", "10m", "1.5h")] == [90, 90, 600, 5400]
    for bad in ("10 minutes", "-5m", "0", "m"):
        with pytest.raises(AstroclassError, match="is not a duration"):
            parse_duration(bad)
    with pytest.raises(AstroclassError, match="budget: 'soon' is not a duration"):
        RunConfig(dataset="d.h5", budget="soon").validate()


class StepClock:
    """A clock for a run's timings that moves a fixed step each time it is read: the epochs and the budget then
    see the same seconds however busy the machine is."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_budget_sizes_the_epochs_after_the_first_and_the_run_ends_within_it(tiny_h5, tmp_path):
    """500 epochs asked for, 12 s of budget, on a clock where every reading is 0.1 s later: the first epoch is
    timed, the epochs are sized to what fits (the cosine schedule with them, down to about 0), and the run, its
    final evaluation included, ends within the budget on that clock."""
    cfg = RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=500, patience=500, batch_size=16, seed=0,
                    budget="12s", schedule="cosine")
    clock = StepClock(0.1)
    res = train(cfg, tmp_path / "b", progress=False, clock=clock)
    sized = res.environment["budget"]
    assert sized["seconds"] == 12 and 1 < sized["epochs"] < 500 and sized["first_epoch_seconds"] > 0
    assert res.epochs_run == sized["epochs"] and not res.stopped_early
    lrs = [float(r["lr"]) for r in csv.DictReader(open(tmp_path / "b" / "history.csv"))]
    assert lrs[0] == pytest.approx(1e-3, rel=1e-2) and lrs[-1] < 0.2 * lrs[0]  # the cosine ends with the budget
    assert 0 < sized["seconds_used"] <= 12 and clock.now <= 12 + 2  # the clock's end: writing the outputs
    # the same run on the same clock sizes the same epochs
    again = train(cfg, tmp_path / "c", progress=False, clock=StepClock(0.1))
    assert again.environment["budget"]["epochs"] == sized["epochs"]


def test_the_modern_recipe_fine_tunes_the_whole_backbone_with_adamw_and_its_batch_norms_frozen(tiny_h5, tmp_path):
    from astroclass.models import build_model

    cfg = RunConfig.from_dict({"dataset": str(tiny_h5), "recipe": "modern", "epochs": 2, "patience": 2,
                               "head_epochs": 1, "batch_size": 16, "tta": False})
    res = train(cfg, tmp_path / "m", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "m" / "history.csv")))
    assert [r["phase"] for r in rows] == ["head", "finetune", "finetune"] and res.status == "done"
    assert float(rows[1]["lr"]) == pytest.approx(3e-4)  # AdamW at the fine-tuning rate, after 1 warm-up epoch
    ref = build_model("efficientnet_lite0", 2, input_size=32, weights="package").state_dict()
    trained = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)["state_dict"]
    first_conv = next(k for k in ref if k.startswith("backbone.") and k.endswith("weight"))
    assert not torch.equal(ref[first_conv], trained[first_conv])  # the first layer trained too
    # every batch norm (scale, shift and statistics) exactly as the ImageNet weights left it; every conv moved
    model = build_model("efficientnet_lite0", 2, input_size=32)
    bn = {f"backbone.{n}" for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    conv = {f"backbone.{n}" for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert len(bn) > 40 and len(conv) > 40
    for k, v in ref.items():
        layer = k.rsplit(".", 1)[0]
        if layer in bn and v.is_floating_point():
            assert torch.equal(v, trained[k]), k
        elif layer in conv:
            assert not torch.equal(v, trained[k]), k
    assert res.environment["finetune"]["finetune_bn"] == "frozen"
    # the report says so
    from types import SimpleNamespace

    from astroclass.report.build import _finetuning

    done = SimpleNamespace(setup="pretrained", metrics={"environment": res.environment}, config=res.config)
    assert _finetuning([done]) == ("Fine-tuning: 1 run(s) unfroze all (the whole backbone) except its batch norms, "
                                   "which normalised on their moving statistics.")


def test_tta_final_only_validates_each_epoch_plainly_and_evaluates_the_kept_weights_with_tta(tiny_h5, tmp_path):
    base = {"dataset": str(tiny_h5), "model": "test_resnet", "epochs": 2, "batch_size": 16, "seed": 3}
    plain = train(RunConfig(**base), tmp_path / "plain", progress=False)
    final = train(RunConfig(**base, tta=True, tta_each_epoch=False), tmp_path / "final", progress=False)
    train(RunConfig(**base, tta=True), tmp_path / "every", progress=False)

    def history(name):
        return [{k: r[k] for k in ("train_loss", "val_loss", "val_accuracy")}
                for r in csv.DictReader(open(tmp_path / name / "history.csv"))]

    assert history("final") == history("plain") != history("every")  # the same epochs, validated without TTA
    assert final.best_epoch == plain.best_epoch  # kept by the plain validation
    tta_probs = dict(np.load(tmp_path / "final" / "predictions.npz"))["test_probs"]
    plain_probs = dict(np.load(tmp_path / "plain" / "predictions.npz"))["test_probs"]
    assert not np.allclose(tta_probs, plain_probs, atol=1e-4)  # the final metrics with TTA


def test_train_cli_takes_a_recipe_and_refuses_a_bad_budget(cli, tiny_h5, tmp_path):
    code, _, err = cli("train", str(tiny_h5), "--budget", "soon", "-o", str(tmp_path / "x"))
    assert code == 1 and "budget: 'soon' is not a duration" in err
    assert not (tmp_path / "x").exists()
    code, text, err = cli("train", str(tiny_h5), "--recipe", "modern", "--model", "test_resnet", "--epochs", "2",
                          "--batch-size", "16", "--budget", "0.01s", "-q", "-o", str(tmp_path / "r"))
    assert code == 0, err
    assert "note: the budget (0.01s) was shorter than the least this run could do" in text
    saved = RunConfig.from_yaml(tmp_path / "r" / "config.yaml")
    assert (saved.recipe, saved.optimizer, saved.augment, saved.setup) == ("modern", "adamw", True, "scratch")


def test_a_budget_with_no_model_named_picks_the_largest_backbone_that_fits_it(cli, tiny_h5, tmp_path, monkeypatch):
    """Candidates timed on this machine, largest first: one whose weights cannot be had is passed over and
    said so; one that fits MIN_EPOCHS in the budget is taken; with too short a budget the smallest."""
    import timm

    from astroclass.training import pick

    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), weights)
    candidates = (("resnet34", str(tmp_path / "missing.pth")), ("resnet18", str(weights)),
                  ("efficientnet_lite0", "package"))
    options = {"dataset": str(tiny_h5), "recipe": "modern", "batch_size": 16}
    roomy = pick.pick_backbone(options, 1e6, candidates)
    assert (roomy.model, roomy.weights) == ("resnet18", str(weights))
    assert "resnet34: passed over" in roomy.lines[0] and "missing.pth" in roomy.lines[0]
    assert roomy.lines[1].startswith("resnet18: about ") and roomy.lines[1].endswith("chosen")
    tight = pick.pick_backbone(options, 0.5, candidates)
    assert (tight.model, tight.weights) == ("efficientnet_lite0", "package")
    assert "(fewer than 10)" in tight.lines[1]
    assert re.fullmatch(r"efficientnet_lite0: about [0-9.]+ s per epoch here, 0 fine-tuning epochs in the budget: "
                        r"chosen \(the smallest candidate\)", tight.lines[2]), tight.lines[2]  # timed too
    missing = pick.pick_backbone(options, 0.5, (("resnet34", str(tmp_path / "missing.pth")),) + candidates[1:])
    assert missing.lines[0] == f"resnet34: passed over ({tmp_path / 'missing.pth'}: weights file not found)"
    # the CLI: the pick trains, fine-tuned from its weights, with what is left of the budget
    monkeypatch.setattr(pick, "CANDIDATES", candidates)
    code, text, err = cli("train", str(tiny_h5), "--recipe", "modern", "--budget", "1h", "--epochs", "1",
                          "--head-epochs", "1", "--batch-size", "16", "--no-tta", "-q", "-o", str(tmp_path / "r"))
    assert code == 0, err
    assert "recipe modern, budget 1h: timing backbones on this machine" in err and "resnet18: about" in err
    saved = RunConfig.from_yaml(tmp_path / "r" / "config.yaml")
    assert (saved.model, saved.setup, saved.weights) == ("resnet18", "pretrained", str(weights))
    assert 3500 < parse_duration(saved.budget) < 3600


def test_report_labels_name_a_recipe_and_only_what_a_run_changed_of_it():
    from astroclass.report.tables import differing_keys, variant_of, variant_text

    def variant(**kw):
        return variant_of(RunConfig.from_dict({"dataset": "x", "head_epochs": 1, **kw}).to_dict())

    runs = [variant(recipe="paper"), variant(recipe="modern", model="resnet18"),
            variant(recipe="modern", model="resnet18", ema=0.9)]
    keys = differing_keys(runs)
    assert {"augment", "ema", "tta", "recipe"} <= set(keys)
    assert [variant_text(v, keys) for v in runs] == ["recipe=paper", "recipe=modern", "ema=0.9, recipe=modern"]
    assert len(set(runs)) == 3  # the runs still pool only with runs of exactly their options


def test_no_head_epochs_means_no_head_phase(tiny_h5, tmp_path):
    """head_epochs 0: fine-tuning starts at once (no head epoch trained on the side)."""
    cfg = RunConfig.from_dict({"dataset": str(tiny_h5), "recipe": "modern", "epochs": 1, "patience": 1,
                               "head_epochs": 0, "batch_size": 16, "tta": False})
    train(cfg, tmp_path / "m", progress=False)
    assert [r["phase"] for r in csv.DictReader(open(tmp_path / "m" / "history.csv"))] == ["finetune"]


def test_a_budget_is_each_runs_in_a_fused_group(tiny_h5, tmp_path):
    """Two runs fused with a 12 s budget each: the group has 24 s, so on the same clock (where a fused epoch
    reads it as often as one run's) each run trains at least the epochs it would alone."""
    from astroclass.training.loop import GroupTrainer

    cfgs = [RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=500, patience=500, batch_size=16, seed=s,
                      budget="12s", schedule="cosine") for s in (0, 1)]
    alone = train(cfgs[0], tmp_path / "alone", progress=False, clock=StepClock(0.1))
    fused = GroupTrainer(cfgs, [tmp_path / "f0", tmp_path / "f1"], progress=False, clock=StepClock(0.1)).run()
    for r in fused:
        assert r.status == "done" and r.environment["budget"]["seconds"] == 12
        assert r.environment["budget"]["group_runs"] == 2
        assert r.epochs_run >= alone.epochs_run


def test_a_budget_replans_every_epoch_down_under_load_and_up_when_it_goes(tiny_h5, tmp_path):
    """The machine is busy for the first two epochs (each clock reading 8x later), then quiet: the plan made
    under load is raised again once epochs are fast, the cosine schedule follows without a jump, and the run
    uses its budget: it ends within it, or past it by less than one epoch."""
    cfg = RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=500, patience=500, batch_size=16, seed=0,
                    budget="40s", schedule="cosine")
    clock = StepClock(0.4)
    rows: list[dict] = []

    def on_epoch(row: dict) -> None:
        rows.append(row)
        if len(rows) == 2:
            clock.step = 0.05  # the other work ends

    res = train(cfg, tmp_path / "b", progress=False, on_epoch=on_epoch, clock=clock)
    busy = rows[1]["seconds"]
    planned_under_load = 2 + math.floor((40 - 2 * busy) / busy)
    assert res.epochs_run > 2 * planned_under_load  # raised again once the load went away
    lrs = [r["lr"] for r in rows]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(lrs, lrs[1:]))  # never rises: the decay follows the plan
    assert lrs[-1] < 0.2 * lrs[0]  # and ends near 0 with the run
    used = res.environment["budget"]["seconds_used"]
    assert 40 - 4 * rows[-1]["seconds"] - 3 <= used <= 40 + rows[-1]["seconds"]


def test_a_budget_spent_by_the_first_epoch_is_said_at_once(tiny_h5, tmp_path, monkeypatch):
    from astroclass import progress

    said: list[str] = []
    monkeypatch.setattr(progress, "say", said.append)
    import astroclass.training.loop as loop

    monkeypatch.setattr(loop, "say", said.append)
    cfg = RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=50, batch_size=16, budget="1s")
    seen_at: list[int] = []
    res = train(cfg, tmp_path / "b", progress=True, on_epoch=lambda row: seen_at.append(len(said)),
                clock=StepClock(0.5))
    notes = [s for s in said if s.startswith("note: the budget (1s) is spent after the first epoch")]
    assert len(notes) == 1 and res.epochs_run == 1
    assert said.index(notes[0]) < seen_at[0]  # said when the first epoch ended, not at the end of the run
