"""Training runs: Keras optimiser defaults, early stopping, outputs, reproducibility, failures, learning."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from astroclass.errors import AstroclassError
from astroclass.training import EarlyStopping, RunConfig, TrainingFailed, augment_batch, make_optimizer, to_float, train


def test_optimisers_use_keras_defaults():
    p = [torch.nn.Parameter(torch.zeros(2))]
    rms = make_optimizer("rmsprop", p).param_groups[0]
    assert (rms["lr"], rms["alpha"], rms["eps"], rms["momentum"], rms["centered"]) == (1e-3, 0.9, 1e-7, 0.0, False)
    adam = make_optimizer("adam", p)
    g = adam.param_groups[0]
    assert isinstance(adam, torch.optim.Adam)
    assert (g["lr"], g["betas"], g["eps"], g["amsgrad"]) == (1e-3, (0.9, 0.999), 1e-7, False)
    radam = make_optimizer("radam", p)
    g = radam.param_groups[0]
    assert isinstance(radam, torch.optim.RAdam) and (g["lr"], g["betas"], g["eps"]) == (1e-3, (0.9, 0.999), 1e-7)
    g = make_optimizer("sgd", p).param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"]) == (1e-2, 0.0, False)
    assert make_optimizer("adam", p, lr=5e-4).param_groups[0]["lr"] == 5e-4
    # the fast path's fused kernels (Adam, SGD; RMSprop and RAdam have none) give the same updates
    assert make_optimizer("adam", p, fused=True).param_groups[0]["fused"] is True
    assert not make_optimizer("rmsprop", p, fused=True).param_groups[0].get("fused")
    torch.manual_seed(0)
    grads = [torch.randn(64, 8) for _ in range(5)]
    for name in ("adam", "sgd"):
        w = [torch.nn.Parameter(torch.ones(64, 8)) for _ in range(2)]
        opts = [make_optimizer(name, [w[0]]), make_optimizer(name, [w[1]], fused=True)]
        for g in grads:
            for wi, o in zip(w, opts):
                wi.grad = g.clone()
                o.step()
        torch.testing.assert_close(w[1], w[0], rtol=1e-6, atol=1e-7)
        assert not torch.equal(w[0], torch.ones(64, 8))
    with pytest.raises(AstroclassError, match="optimizer must be one of"):
        make_optimizer("adagrad", p)


def test_early_stopping_stops_at_best_plus_patience_and_restores_best():
    model = torch.nn.Linear(1, 1)
    stopper = EarlyStopping(patience=3)
    losses = [5.0, 4.0, 3.0, 3.5, 3.0, 3.7, 9.0]  # best at epoch 3; epoch 5 ties, which is no improvement
    stopped_at = None
    for epoch, loss in enumerate(losses, start=1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        if stopper.step(loss, epoch, model):
            stopped_at = epoch
            break
    assert stopped_at == 6 and stopper.best_epoch == 3
    stopper.restore(model)
    assert float(model.weight.detach()) == 3.0


def test_augmentation_applies_symmetries_of_the_square():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5).repeat(20, 1, 1, 1)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    seen = set()
    for a, b in zip(x, out):
        forms = [torch.rot90(a, k, dims=(1, 2)) for k in range(4)]
        forms += [f.flip(2) for f in forms]
        match = [i for i, f in enumerate(forms) if torch.equal(f, b)]
        assert match
        seen.add(match[0])
    assert len(seen) >= 6


def test_runs_augmented_together_get_exactly_what_each_gets_alone():
    """A fused group's runs (their own generators and shifts; one without augmentation) augmented in one pass:
    bit for bit each run's augmentation alone, and each generator left where it would be alone."""
    from astroclass.training.method import augment_runs

    torch.manual_seed(0)
    x, b = torch.rand(4 * 16, 3, 20, 20), 16
    shifts = [0.0, 1.5, None, 0.5]
    together = [torch.Generator().manual_seed(i) for i in range(4)]
    alone = [torch.Generator().manual_seed(i) for i in range(4)]
    out = augment_runs(x, [(g, s) if s is not None else None for g, s in zip(together, shifts)])
    for r, s in enumerate(shifts):
        rows = slice(r * b, (r + 1) * b)
        expected = x[rows] if s is None else augment_batch(x[rows], alone[r], s)
        assert torch.equal(out[rows], expected), r
        assert torch.equal(together[r].get_state(), alone[r].get_state()), r
    assert not torch.equal(out[b:2 * b], x[b:2 * b])


def test_sub_pixel_shifts_move_images_by_at_most_the_shift_and_keep_their_flux():
    x = torch.zeros(400, 1, 21, 21)
    x[:, :, 10, 10] = 1.0  # a point source in the centre
    plain = augment_batch(x, torch.Generator().manual_seed(0))
    shifted = augment_batch(x, torch.Generator().manual_seed(0), shift=0.8)
    assert torch.equal(plain, x)  # a centred point is its own symmetry: only the shift moves it
    yy, xx = torch.meshgrid(torch.arange(21.0), torch.arange(21.0), indexing="ij")
    flux = shifted.sum((1, 2, 3))
    cx = (shifted[:, 0] * xx).sum((1, 2)) / flux - 10
    cy = (shifted[:, 0] * yy).sum((1, 2)) / flux - 10
    assert torch.allclose(flux, torch.ones(400), atol=1e-5)  # bilinear: the light is moved, not lost
    assert cx.abs().max() <= 0.8 + 1e-5 and cy.abs().max() <= 0.8 + 1e-5
    assert cx.abs().max() > 0.6 and (cx.abs() > 1e-3).float().mean() > 0.9 and (cx > 0).any() and (cx < 0).any()
    assert (shifted.flatten(1).max(1).values < 1).float().mean() > 0.9  # sub-pixel: the point is spread
    with pytest.raises(AstroclassError, match="augment_shift must be a number of pixels"):
        RunConfig(dataset="d.h5", augment_shift=-1).validate()


def test_label_smoothing_adamw_and_a_warmed_up_cosine_schedule(tiny_h5, tmp_path):
    from astroclass.training.method import run_losses

    torch.manual_seed(0)
    logits, y = torch.randn(2 * 8, 3), torch.randint(0, 3, (16,))
    got = run_losses(logits, y, torch.ones(2, 3), torch.tensor([0.0, 0.2]))
    assert got[0] == pytest.approx(float(F.cross_entropy(logits[:8], y[:8])), rel=1e-6)
    assert got[1] == pytest.approx(float(F.cross_entropy(logits[8:], y[8:], label_smoothing=0.2)), rel=1e-6)
    opt = make_optimizer("adamw", [torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.05
    cfg = RunConfig(dataset=str(tiny_h5), model="test_resnet", optimizer="adamw", schedule="cosine", warmup_epochs=1,
                    label_smoothing=0.1, epochs=4, patience=4, batch_size=16, seed=2)
    res = train(cfg, tmp_path / "run", progress=False)
    lrs = [float(r["lr"]) for r in csv.DictReader(open(tmp_path / "run" / "history.csv"))]
    assert res.status == "done" and len(lrs) == 4
    assert lrs[0] == pytest.approx(1e-3)  # the end of the warm-up: the optimiser's own rate
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3] and lrs[3] < 0.05 * lrs[0]  # then a cosine down to about 0
    with pytest.raises(AstroclassError, match="schedule must be one of"):
        RunConfig(dataset="d.h5", schedule="step").validate()


def test_an_averaged_model_is_validated_and_kept_while_training_goes_on_unchanged(tiny_h5, tmp_path):
    """ema: the average does not touch training (same training losses as without it), validation and the
    checkpoint use it (other validation losses; the checkpoint's recomputed loss is the best epoch's)."""
    base = dict(dataset=str(tiny_h5), model="test_resnet", epochs=5, patience=5, batch_size=16, seed=4, amp="off",
                l2=0.1)
    plain = train(RunConfig(**base), tmp_path / "plain", progress=False)
    avg = train(RunConfig(**base, ema=0.9), tmp_path / "ema", progress=False)
    hp = list(csv.DictReader(open(tmp_path / "plain" / "history.csv")))
    he = list(csv.DictReader(open(tmp_path / "ema" / "history.csv")))
    assert [r["train_loss"] for r in hp] == [r["train_loss"] for r in he]
    assert [r["val_loss"] for r in hp] != [r["val_loss"] for r in he]
    val_losses = [float(r["val_loss"]) for r in he]
    assert avg.best_epoch == int(np.argmin(val_losses)) + 1 and plain.status == avg.status == "done"
    assert _val_loss_of_checkpoint(tmp_path / "ema", tiny_h5, 0.1) == pytest.approx(val_losses[avg.best_epoch - 1],
                                                                                    rel=1e-4)
    with pytest.raises(AstroclassError, match="ema must be a decay"):
        RunConfig(dataset="d.h5", ema=1.0).validate()


def test_a_run_with_tta_reports_the_mean_over_the_8_symmetries(tiny_h5, tmp_path):
    import astroclass
    from astroclass.data import PreparedDataset
    from astroclass.training.method import dihedral

    cfg = RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=2, batch_size=16, seed=1, amp="off", tta=True,
                    augment=True, augment_shift=0.5)
    res = train(cfg, tmp_path / "run", progress=False)
    saved = np.load(tmp_path / "run" / "predictions.npz")
    clf = astroclass.load(tmp_path / "run" / "checkpoint.pt")
    with PreparedDataset(tiny_h5) as ds:
        x = torch.from_numpy(ds.images(saved["test_index"]))
    np.testing.assert_allclose(clf.predict_tensor(x, tta=True), saved["test_probs"], atol=1e-5)
    assert not np.allclose(clf.predict_tensor(x), saved["test_probs"], atol=1e-4)  # not the plain prediction
    for k in (1, 5):  # and so the same for any symmetry of the images
        np.testing.assert_allclose(clf.predict_tensor(dihedral(x, k), tta=True), saved["test_probs"], atol=1e-5)
    assert res.status == "done" and res.config["tta"] is True


def _val_loss_of_checkpoint(run_dir, dataset, l2):
    from astroclass.data import PreparedDataset
    from astroclass.models import build_model

    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    card = ck["card"]
    m = build_model(card["model"], card["num_classes"], card["in_chans"], card["input_size"], card["pooling"])
    m.load_state_dict(ck["state_dict"])
    m.eval()
    with PreparedDataset(dataset) as ds, torch.no_grad():
        x, y = ds.tensors("val")
        loss = F.cross_entropy(m(to_float(x)), y) + l2 * m.l2_penalty()
    return float(loss)


def test_scratch_run_outputs_and_best_weights(tiny_h5, tmp_path):
    # amp off: the checkpoint's val loss is recomputed below in fp32 and must match the history to 1e-4
    cfg = RunConfig(dataset=str(tiny_h5), model="test_resnet", setup="scratch", l2=0.1, maxnorm=2.0,
                    optimizer="rmsprop", epochs=6, patience=2, batch_size=16, seed=3, amp="off")
    run = tmp_path / "run"
    res = train(cfg, run, progress=False)
    assert res.status == "done" and {p.name for p in run.iterdir()} >= {
        "config.yaml", "history.csv", "checkpoint.pt", "predictions.npz", "result.json"}
    assert RunConfig.from_yaml(run / "config.yaml") == cfg
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert list(rows[0]) == ["phase", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                             "seconds"]
    assert len(rows) == res.epochs_run
    val_losses = [float(r["val_loss"]) for r in rows]
    assert res.best_epoch == int(np.argmin(val_losses)) + 1
    if res.stopped_early:  # stopped patience epochs after the best one ...
        assert res.epochs_run == res.best_epoch + cfg.patience
    else:  # ... or ran every epoch because the best one came too late to stop
        assert res.epochs_run == cfg.epochs and res.best_epoch > cfg.epochs - cfg.patience
    # the checkpoint holds the best epoch's weights; val loss includes the L2 term, as in Keras
    assert _val_loss_of_checkpoint(run, tiny_h5, 0.1) == pytest.approx(val_losses[res.best_epoch - 1], rel=1e-4)
    saved = json.loads((run / "result.json").read_text())
    assert saved["status"] == "done" and saved["val"]["accuracy"] == res.val["accuracy"]
    for split in ("val", "test"):
        m = saved[split]
        assert set(m) >= {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "ece",
                          "accuracy_ci95"}
        assert sum(map(sum, m["confusion_matrix"])) == m["n"]
        assert m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1]
    assert saved["environment"]["torch"] == torch.__version__ and saved["dataset_hash"]
    preds = np.load(run / "predictions.npz")
    assert preds["test_probs"].shape == (saved["test"]["n"], 2)
    assert np.allclose(preds["test_probs"].sum(1), 1, atol=1e-5)
    assert (preds["test_probs"].argmax(1) == preds["test_labels"]).mean() == pytest.approx(saved["test"]["accuracy"])


def test_same_config_twice_gives_identical_results(tiny_h5, tmp_path):
    cfg = RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=2, batch_size=16, seed=7, augment=True)
    a = train(cfg, tmp_path / "a", progress=False)
    b = train(cfg, tmp_path / "b", progress=False)
    assert a.val == b.val and a.test == b.test
    assert (tmp_path / "a" / "history.csv").read_text().split("\n")[1].split(",")[2:6] == \
        (tmp_path / "b" / "history.csv").read_text().split("\n")[1].split(",")[2:6]
    c = train(RunConfig(**{**cfg.to_dict(), "seed": 8}), tmp_path / "c", progress=False)
    assert c.val["accuracy"] != a.val["accuracy"] or c.test != a.test or \
        (tmp_path / "c" / "history.csv").read_text() != (tmp_path / "a" / "history.csv").read_text()


def test_pretrained_setup_has_head_and_finetune_phases(tiny_h5, tmp_path):
    """Head phase: only the head trains (backbone weights and batch-norm statistics bit-identical to the
    ImageNet weights); fine-tune phase: SGD 1e-3 on the last k layers, early-stopped on its own epochs."""
    from astroclass.models import build_model, layers

    cfg = RunConfig(dataset=str(tiny_h5), model="efficientnet_lite0", setup="pretrained", head_epochs=2, epochs=3,
                    patience=3, batch_size=16, optimizer="radam", unfreeze="params:2", amp="off")
    res = train(cfg, tmp_path / "p", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "p" / "history.csv")))
    assert [r["phase"] for r in rows] == ["head", "head", "finetune", "finetune", "finetune"]
    assert all(float(r["lr"]) == 1e-3 for r in rows)  # RAdam's Keras default, then the fine-tune SGD
    finetune = [float(r["val_loss"]) for r in rows if r["phase"] == "finetune"]
    assert res.best_epoch == int(np.argmin(finetune)) + 1
    ref = build_model("efficientnet_lite0", 2, input_size=32, weights="package")
    trained = {k: v for k, v in torch.load(tmp_path / "p" / "checkpoint.pt", weights_only=True)["state_dict"].items()}
    unfrozen = {name for name, _ in layers(ref.backbone)[-2:]}
    moved = {k.removeprefix("backbone.").rsplit(".", 1)[0] for k, v in ref.state_dict().items()
             if k.startswith("backbone.") and v.dtype.is_floating_point and not torch.equal(v, trained[k])}
    assert moved == unfrozen, (moved, unfrozen)
    assert res.environment["finetune"] == {"unfreeze": "params:2", "frozen_bn": "moving",
                                          "finetune_bn": "train"}
    # Keras 2.2's frozen batch norms (the paper's): batch statistics while training, running statistics kept
    res_b = train(RunConfig(**{**cfg.to_dict(), "frozen_bn": "batch"}), tmp_path / "b", progress=False)
    assert res_b.environment["finetune"] == {"unfreeze": "params:2", "frozen_bn": "batch",
                                            "finetune_bn": "train"}
    trained_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["state_dict"]
    moved_b = {k.removeprefix("backbone.").rsplit(".", 1)[0] for k, v in ref.state_dict().items()
               if k.startswith("backbone.") and v.dtype.is_floating_point and not torch.equal(v, trained_b[k])}
    assert moved_b == unfrozen
    rows_b = list(csv.DictReader(open(tmp_path / "b" / "history.csv")))
    assert rows_b[0]["train_loss"] != rows[0]["train_loss"]  # the head saw other features from epoch 1
    assert RunConfig(dataset="x", paper_exact=True).resolved_frozen_bn() == "batch"


def test_configs_of_earlier_versions_still_load(tmp_path):
    """unfreeze_layers: N (earlier versions: parameterised modules) reads as unfreeze: params:N, in run config
    files and in grid specs; pretrained runs always carry unfreeze and frozen_bn in their ids."""
    from astroclass.experiments import GridSpec
    from astroclass.experiments.spec import run_id

    (tmp_path / "old.yaml").write_text("dataset: sg.h5\nmodel: vgg16\nsetup: pretrained\nunfreeze_layers: 4\n")
    assert RunConfig.from_yaml(tmp_path / "old.yaml").unfreeze == "params:4"
    (tmp_path / "spec.yaml").write_text("datasets: {SG: sg.h5}\nmodels: [vgg16]\nsetups: [scratch, pretrained]\n"
                                        "axes: {unfreeze_layers: [2, 4]}\n")
    runs = GridSpec.load(tmp_path / "spec.yaml").expand()
    assert sorted({r.config["unfreeze"] for r in runs}) == ["params:2", "params:4"]
    axes = ("dataset", "model", "setup", "l2", "maxnorm", "optimizer", "seed")  # what earlier ids hashed
    scratch = RunConfig(dataset="SG", model="vgg16").to_dict()
    assert run_id(scratch) == run_id({k: scratch[k] for k in axes})  # scratch ids unchanged
    pre = RunConfig(dataset="SG", model="vgg16", setup="pretrained").to_dict()
    assert run_id(pre) != run_id({k: pre[k] for k in axes})  # a pretrained run of an earlier version is not today's
    with pytest.raises(AstroclassError, match=r"unfreeze must be N, keras:N, params:N \(N >= 0 layers\) or all"):
        RunConfig(dataset="x", unfreeze="last:7").validate()
    assert RunConfig(dataset="x", unfreeze="all").validate().unfreeze == "all"
    (tmp_path / "bad.yaml").write_text("datasets: {SG: sg.h5}\nmodels: [test_resnet]\nsetups: [pretrained]\n"
                                       "train: {unfreeze: keras:7}\n")
    with pytest.raises(AstroclassError, match="bad.yaml: unfreeze keras:7: Keras layer lists ship"):
        GridSpec.load(tmp_path / "bad.yaml")


def test_nan_loss_marks_the_run_failed_and_keeps_history(tiny_h5, tmp_path, monkeypatch):
    import astroclass.models as models

    built = models.build_model

    def diverged(*args, **kwargs):  # a model whose weights have blown up: its first loss is not finite
        model = built(*args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).fill_(math.inf)
        return model

    monkeypatch.setattr(models, "build_model", diverged)
    cfg = RunConfig(dataset=str(tiny_h5), model="test_resnet", optimizer="sgd", epochs=3, batch_size=16)
    with pytest.raises(TrainingFailed, match="epoch 1"):
        train(cfg, tmp_path / "nan", progress=False)
    saved = json.loads((tmp_path / "nan" / "result.json").read_text())
    assert saved["status"] == "failed" and "epoch 1" in saved["error"]
    assert (tmp_path / "nan" / "history.csv").exists()


def test_split_without_a_class_is_refused(tmp_path):
    from astroclass.data import ImageSpec, write_prepared

    n = 30
    labels = np.array([0] * 20 + [1] * 10)
    split = np.array([0] * 10 + [1] * 5 + [2] * 5 + [0] * 8 + [2] * 2)  # no class 1 in val
    path = tmp_path / "hole.h5"
    write_prepared(path, images=np.zeros((n, 3, 32, 32), np.uint8), labels=labels, split=split,
                   class_names=["a", "b"], ids=[str(i) for i in range(n)], paths=[""] * n, spec=ImageSpec(size=32),
                   source={}, options={})
    with pytest.raises(AstroclassError, match="val split has no examples of class.*'b'"):
        train(RunConfig(dataset=str(path), model="test_resnet", epochs=1), tmp_path / "r", progress=False)


def test_run_config_rejects_unknown_keys_and_values():
    with pytest.raises(AstroclassError, match=r"unknown key\(s\) \['lamda'\]"):
        RunConfig.from_dict({"dataset": "x.h5", "lamda": 0.1})
    with pytest.raises(AstroclassError, match="setup must be one of"):
        RunConfig.from_dict({"dataset": "x.h5", "setup": "finetune"})


def test_train_cli(cli, tiny_h5, tmp_path):
    out = tmp_path / "cli-run"
    code, text, err = cli("train", tiny_h5, "--model", "test_resnet", "--epochs", "1", "--batch-size", "16", "-o", out,
                          "-q")
    assert code == 0, err
    assert "test accuracy" in text and (out / "checkpoint.pt").exists()
    code, _, err = cli("train", tiny_h5, "--model", "test_resnet", "--epochs", "1", "-o", out, "-q")
    assert code == 1 and "--overwrite" in err
    code, _, err = cli("train", tiny_h5, "--model", "densenet12", "-o", tmp_path / "x", "-q")
    assert code == 1 and "did you mean" in err and "densenet121" in err
    code, _, err = cli("train", tiny_h5, "--config", out / "config.yaml", "--epochs", "1", "-o", tmp_path / "y", "-q")
    assert code == 0, err
    assert RunConfig.from_yaml(tmp_path / "y" / "config.yaml").model == "test_resnet"


@pytest.mark.slow
def test_fine_tuned_efficientnet_learns_real_star_galaxy_separation(aries_h5, tmp_path):
    """Real learning on ARIES: majority class (star) is 0.764 of the test split; a CPU-sized fine-tune
    (1 head epoch + 2 fine-tune epochs) measured 0.838-0.850 test accuracy over seeds 0 and 1."""
    cfg = RunConfig(dataset=str(aries_h5), model="efficientnet_lite0", setup="pretrained", head_epochs=1, epochs=2,
                    patience=2, seed=0)
    res = train(cfg, tmp_path / "aries", progress=False)
    majority = max(res.test["per_class"][c]["support"] for c in res.test["per_class"]) / res.test["n"]
    assert majority == pytest.approx(0.764, abs=0.002)
    assert res.test["accuracy"] >= majority + 0.04
    assert res.test["balanced_accuracy"] >= 0.65


def test_fast_path_follows_the_paper_exact_loss_trajectory(tiny_h5, tmp_path):
    """The fp32 fast path (channels-last, 1x1 convolutions as matrix products on CPU, fused Adam) is the
    same maths with other kernels (sums in another order, which training amplifies): over 3 epochs its losses
    stay within 5e-3 (relative) of the exact path (measured: up to 1.5e-3 by epoch 2, one training image's
    prediction apart).
    The default on a CPU with AMX adds bf16 autocast: within 1e-1 there (measured: up to 4.5e-2 by epoch 3)."""
    from astroclass.training import auto_amp, keep_freed_memory

    base = dict(dataset=str(tiny_h5), model="test_resnet", epochs=3, patience=3, batch_size=16, seed=2)
    exact = train(RunConfig(**base, paper_exact=True), tmp_path / "exact", progress=False)
    fast = train(RunConfig(**base, amp="off"), tmp_path / "fast", progress=False)
    auto = train(RunConfig(**base), tmp_path / "auto", progress=False)
    assert exact.environment["speed"] == {"channels_last": False, "compile": None, "amp": None, "matmul_1x1": False,
                                          "fused_optimizer": False, "grouped_kernels": False, "fused": 1,
                                          "keep_freed_memory": keep_freed_memory()}
    assert fast.environment["speed"] == {"channels_last": True, "compile": None, "amp": None, "matmul_1x1": True,
                                         "fused_optimizer": True, "grouped_kernels": False, "fused": 1,
                                         "keep_freed_memory": keep_freed_memory()}
    bf16 = auto_amp(torch.device("cpu")) is not None
    assert auto.environment["speed"]["amp"] == ("bfloat16" if bf16 else None)
    history = {k: list(csv.DictReader(open(tmp_path / k / "history.csv"))) for k in ("exact", "fast", "auto")}
    assert len(history["exact"]) == len(history["fast"]) == len(history["auto"]) == 3
    for k, tol in (("fast", 5e-3), ("auto", 1e-1 if bf16 else 5e-3)):
        for a, b in zip(history["exact"], history[k]):
            for key in ("train_loss", "val_loss"):
                assert float(b[key]) == pytest.approx(float(a[key]), rel=tol), (k, key, a, b)
    with pytest.raises(AstroclassError, match="amp must be one of"):
        RunConfig(**base, amp="fp8").validate()


def test_mixed_precision_keeps_the_head_logits_and_losses_in_fp32(tiny_h5, tmp_path):
    """Under bf16 autocast the backbone computes in bf16, the head, the logits and the losses in fp32 (so early
    stopping and every metric come from fp32 numbers), and the run records the precision it used."""
    from astroclass.models import build_model

    m = build_model("test_resnet", 2, input_size=32).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.features(x).dtype == torch.bfloat16
        assert m(x).dtype == torch.float32
    res = train(RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=1, batch_size=16, amp="bf16"),
                tmp_path / "bf16", progress=False)
    assert res.environment["speed"]["amp"] == "bfloat16" and res.status == "done"


def test_non_positive_learning_rates_are_refused_with_one_line(cli, tiny_h5):
    code, _, err = cli("train", tiny_h5, "--model", "test_resnet", "--lr", "-1")
    assert code == 1 and "lr must be a positive learning rate up to 10, got -1.0" in err and "Traceback" not in err
    with pytest.raises(AstroclassError, match="finetune_lr must be a positive learning rate up to 10, got 0"):
        RunConfig(dataset="x", finetune_lr=0).validate()


def test_run_folder_that_is_a_file_and_fixed_input_size_models_are_one_line_errors(cli, tiny_h5, tmp_path):
    (tmp_path / "taken").write_text("my notes")
    code, out, err = cli("train", tiny_h5, "--model", "test_resnet", "--epochs", "1", "-o", tmp_path / "taken", "-q")
    assert code == 1 and "taken: exists and is not a folder" in err and "Traceback" not in out + err
    assert (tmp_path / "taken").read_text() == "my notes"
    for model in ("vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"):
        code, out, err = cli("train", tiny_h5, "--model", model, "--epochs", "1", "-o", tmp_path / model, "-q")
        assert code == 1 and f"model {model!r} cannot take 3x32x32 inputs" in err, err
        assert "built for 224x224 pixels: import the data with --size 224" in err and "Traceback" not in out + err


def test_train_options_are_made_from_the_run_config(cli, tiny_h5, tmp_path):
    """Every run option is an `astroclass train` option, with the config's help and default; a --config
    file's values stay unless given on the command line."""
    import dataclasses

    import yaml

    code, out, _ = cli("train", "--help")
    assert code == 0
    for f in dataclasses.fields(RunConfig):
        if f.name != "dataset" and f.metadata["cli"]:
            assert f"--{f.name.replace('_', '-')}" in out, f.name
    assert "--fuse" not in out  # grid runs only
    assert "(default: vgg16)" in out and "Speed and numerics" in out
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"dataset": "elsewhere.h5", "model": "test_resnet", "epochs": 1,
                                                     "batch_size": 16, "seed": 5, "subset_seed": 3}))
    code, out, err = cli("train", tiny_h5, "--config", tmp_path / "c.yaml", "--seed", "7", "--no-channels-last",
                         "--frozen-bn", "batch", "-o", tmp_path / "run", "-q")
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["dataset"], saved["model"], saved["epochs"], saved["seed"], saved["subset_seed"]) == \
        (str(tiny_h5), "test_resnet", 1, 7, 3)
    assert saved["channels_last"] is False and saved["frozen_bn"] == "batch"
    code, _, err = cli("train", tiny_h5, "--frozen-bn", "sometimes", "-o", tmp_path / "bad", "-q")
    assert code == 1 and "frozen_bn must be one of" in err


def test_a_run_larger_than_its_memory_budget_streams_and_records_it(tiny_h5, tmp_path, monkeypatch):
    """Over budget, the images stay in the file; with one window (a split no larger than a window) the run is
    the in-memory run exactly, through the background reader; with small windows it trains window by window."""
    import astroclass.training.data as data_mod

    cfg = RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=2, batch_size=16, seed=7, augment=True)
    mem = train(cfg, tmp_path / "mem", progress=False)
    streamed = RunConfig(**{**cfg.to_dict(), "max_memory": "100KB"})  # the slice is 245 KB
    disk = train(streamed, tmp_path / "disk", progress=False)
    assert (mem.storage, disk.storage) == ("memory", "stream")
    assert json.loads((tmp_path / "disk" / "result.json").read_text())["storage"] == "stream"
    assert disk.val == mem.val and disk.test == mem.test
    assert (tmp_path / "disk" / "history.csv").read_text().split("\n")[1].split(",")[2:6] == \
        (tmp_path / "mem" / "history.csv").read_text().split("\n")[1].split(",")[2:6]
    monkeypatch.setattr(data_mod, "stream_window", lambda budget, image_bytes: 16)
    small = train(streamed, tmp_path / "blocks", progress=False)
    assert small.storage == "stream" and small.test["n"] == mem.test["n"]
    assert small.status == "done" and small.train_images_per_s > 0  # another order: another trajectory
    assert (tmp_path / "blocks" / "history.csv").read_text().split("\n")[1].split(",")[2:4] != \
        (tmp_path / "mem" / "history.csv").read_text().split("\n")[1].split(",")[2:4]


def test_streamed_images_are_the_stored_pixels_in_shuffled_windows_of_chunks(tiny_h5):
    from astroclass.data import PreparedDataset
    from astroclass.training.data import DiskImages, block_order

    with PreparedDataset(tiny_h5) as ds:
        rows = ds.indices("train")
        x = DiskImages(ds.path, rows, ds.image_shape, ds.dtype, chunk_rows=8, window=16)
        x.cache_images = 10  # fewer than a window: blocks are read again, the pixels stay right
        pos = np.random.default_rng(0).permutation(len(rows))
        assert (x.gather(pos).numpy() == ds.images(rows[pos])).all()
        assert (x[5:37].numpy() == ds.images(rows[5:37])).all() and x.shape == (len(rows),) + ds.image_shape
        assert all(len(set(rows[a:b] // 8)) == 1 for a, b in zip(x.starts, x.ends))  # a block: one chunk's images
        # the file holds its images sorted by class: positions ordered so, as catalogues often are
        y = torch.from_numpy(np.sort(ds.labels[rows]))
        x.close()
    block = np.searchsorted(x.starts, np.arange(len(y)), side="right") - 1
    order = block_order(y, "none", torch.Generator().manual_seed(0), x.starts, x.ends, 16).numpy()
    assert sorted(order) == list(range(len(y)))  # every image once
    segments, seen = [], []
    for p in order:  # cut where the images so far are whole blocks, at least a window of them
        seen.append(p)
        blocks = set(block[seen])
        if len(seen) >= 16 and len(seen) == sum(x.ends[b] - x.starts[b] for b in blocks):
            segments.append(sorted(blocks))
            seen = []
    last = set(block[seen])  # what is left is a smaller window, of whole blocks too
    assert len(seen) == sum(x.ends[b] - x.starts[b] for b in last) and len(segments) >= 2
    assert any(np.diff(b).max() > 1 for b in segments)  # a window takes blocks from places apart in the file
    batches = [y[order[i:i + 8]] for i in range(0, len(order), 8)]
    assert sum(len(set(b.tolist())) > 1 for b in batches) >= len(batches) // 2  # batches mix the classes
    drawn = block_order(y, "balanced", torch.Generator().manual_seed(0), x.starts, x.ends, 16)
    assert len(drawn) == len(y) and 0 <= int(drawn.min()) and int(drawn.max()) < len(y)
    one = block_order(y, "none", torch.Generator().manual_seed(0), x.starts, x.ends, len(y))
    from astroclass.training.method import epoch_order

    assert torch.equal(one, epoch_order(y, "none", torch.Generator().manual_seed(0)))  # one window: as in memory


def test_a_read_error_in_the_background_reader_reaches_the_training_loop(tiny_h5):
    from astroclass.data import PreparedDataset
    from astroclass.training.data import DiskImages, batches

    class Failing(DiskImages):
        calls = 0

        def gather(self, positions):
            Failing.calls += 1
            if Failing.calls == 2:
                raise OSError(f"{self.path}: read error (disk unplugged)")
            return super().gather(positions)

    with PreparedDataset(tiny_h5) as ds:
        x = Failing(ds.path, ds.indices("train"), ds.image_shape, ds.dtype, ds.chunk_rows)
    got = []
    with pytest.raises(OSError, match="disk unplugged"):
        for xb in batches(x, [torch.arange(8), torch.arange(8, 16), torch.arange(16, 24)]):
            got.append(xb)
    assert len(got) == 1 and not any(t.name == "astroclass-prefetch" for t in __import__("threading").enumerate())
    x.close()


def test_memory_budgets_are_sizes_or_a_share_of_the_available_memory(monkeypatch):
    import astroclass.training.data as data_mod
    from astroclass.runconfig import parse_size

    monkeypatch.setattr(data_mod, "available_memory", lambda device: 16 * 2**30)
    cpu = torch.device("cpu")
    auto = RunConfig(dataset="d.h5")
    assert data_mod.memory_budget(auto, cpu) == (8 * 2**30, 8 * 2**30)
    assert data_mod.memory_budget(auto, cpu, share=4) == (2 * 2**30, 2 * 2**30)  # four workers on the machine
    assert data_mod.memory_budget(RunConfig(dataset="d.h5", max_memory="300MB"), cpu, share=4)[0] == 300 * 2**20

    assert parse_size("512MB") == 512 * 2**20 and parse_size("1.5G") == 3 * 2**29 and parse_size("100") == 100
    with pytest.raises(AstroclassError, match="max_memory: 'lots' is not a size"):
        RunConfig(dataset="d.h5", max_memory="lots").validate()


def test_a_damaged_file_met_while_streaming_fails_the_run_with_the_file_named(aries_h5, tmp_path, cli):
    """The file's metadata reads (the run starts), but the image chunks in its second half are garbage."""
    bad = tmp_path / "damaged.h5"
    data = bytearray(aries_h5.read_bytes())
    half = len(data) // 2
    data[half:half + len(data) // 4] = bytes((i * 31 + 7) % 256 for i in range(len(data) // 4))
    bad.write_bytes(bytes(data))
    cfg = RunConfig(dataset=str(bad), model="test_resnet", epochs=1, batch_size=64, max_memory="1MB")
    with pytest.raises(AstroclassError, match=r"damaged\.h5: cannot read images .* while streaming"):
        train(cfg, tmp_path / "run", progress=False)
    code, _, err = cli("train", bad, "--model", "test_resnet", "--epochs", "1", "--max-memory", "1MB",
                       "-o", tmp_path / "cli", "-q")
    assert code == 1 and "damaged.h5: cannot read images" in err and "Traceback" not in err


_KEEP_FREED_SCRIPT = """
import json, resource, sys, torch
from astroclass.training import RunConfig, train
r = train(RunConfig(dataset=sys.argv[1], model="test_resnet", epochs=1, batch_size=16, amp="off"), sys.argv[2],
          progress=False)
x = torch.randn(16_000_000)
(x * 2).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    y = x * 2
    del y
print(json.dumps({"kept": r.environment["speed"]["keep_freed_memory"],
                  "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5}))
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_cpu_training_process_keeps_freed_memory_for_reuse(tiny_h5, tmp_path):
    """Once training has started in a process, a freed 64 MB temporary made again reuses its memory instead of being
    mapped and page-faulted afresh; with ASTROCLASS_KEEP_FREED_MEMORY=0 glibc's default stays (every page faulted
    again), and result.json says which."""
    import os
    import subprocess
    import sys

    pages = 64e6 / 4096
    for flag, kept in (("1", True), ("0", False)):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
        env["ASTROCLASS_KEEP_FREED_MEMORY"] = flag
        proc = subprocess.run([sys.executable, "-c", _KEEP_FREED_SCRIPT, str(tiny_h5), str(tmp_path / flag)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got["kept"] is kept
        assert got["faults"] < 0.05 * pages if kept else got["faults"] > 0.5 * pages, got


def test_compile_auto_makes_each_step_one_graph_on_a_gpu_wherever_every_step_can_be_one():
    """``compile: auto`` on a GPU: the paper's runs (a fixed learning rate, no weight average), alone or fused,
    capture each training step as one CUDA graph (no compiling); a run whose step reads something that changes
    every step (a schedule, warm-up, a weight average: the modern recipe) is compiled with torch.compile's graphs
    alone and trains eager in a fused group, as does a group with one such run. Nothing on a CPU."""
    from astroclass.runconfig import apply_recipe, auto_compile

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    paper = RunConfig(dataset="d.h5", model="vgg16")
    modern = RunConfig(**apply_recipe({"dataset": "d.h5", "recipe": "modern"}))
    assert not modern.steps_capturable() and paper.steps_capturable()
    for change in ({"schedule": "cosine"}, {"warmup_epochs": 1}, {"ema": 0.99}):
        assert not RunConfig(dataset="d.h5", model="vgg16", **change).steps_capturable(), change
    assert auto_compile([paper], gpu) == "step-graph"
    assert auto_compile([paper, RunConfig(dataset="d.h5", model="vgg16", optimizer="sgd", l2=0.1)], gpu) == "step-graph"
    assert auto_compile([modern], gpu) == "reduce-overhead"
    assert auto_compile([paper, RunConfig(dataset="d.h5", model="vgg16", schedule="cosine")], gpu) is None
    assert auto_compile([paper], cpu) is None and auto_compile([modern], cpu) is None
    assert paper.speed(cpu)["compile"] is None
    explicit = RunConfig(dataset="d.h5", model="vgg16", compile="reduce-overhead")
    assert explicit.speed(cpu)["compile"] == explicit.speed(gpu)["compile"] == "reduce-overhead"


def test_workers_sharing_a_gpu_size_groups_and_data_from_their_share_of_it(tiny_h5, monkeypatch):
    """Workers that start on one GPU together all see its memory free: each counts at most the total over the
    workers on it (a stand-in for CUDA's memory query; the sizing builds and measures the model on the CPU)."""
    import astroclass.training.loop as loop
    from astroclass.training import WorkerCache, fused_group_size
    from astroclass.training.data import memory_budget
    from astroclass.training.speed import available_memory

    mib = 100 * 2**20
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * mib, 80 * mib))
    gpu = torch.device("cuda", 0)
    assert available_memory(gpu) == 70 * mib and available_memory(gpu, 4) == 20 * mib
    assert memory_budget(RunConfig(dataset="d.h5"), gpu, device_share=4)[1] == 10 * mib
    monkeypatch.setattr(loop, "resolve_device", lambda name: gpu)
    cache = WorkerCache()
    cfg = RunConfig(dataset=str(tiny_h5), model="test_resnet", batch_size=16)
    alone = fused_group_size(cfg, 10_000, True, cache)
    per_run = next(iter(cache.models.sizes.values()))
    shared = fused_group_size(cfg, 10_000, True, cache, device_share=4)
    assert alone == int(0.6 * 70 * mib // per_run) and shared == int(0.6 * 20 * mib // per_run) and 1 < shared < alone
    assert fused_group_size(cfg, 3, True, cache, device_share=4) == 3  # the limit still caps it
