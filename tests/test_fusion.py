"""Fused runs: each run of a fused group gets what it gets alone; the grouped kernels compute the same maths."""

from __future__ import annotations

import csv
import dataclasses
import itertools

import pytest
import torch

from astroclass.training import GroupTrainer, RunConfig, WorkerCache, train, train_group
from astroclass.training.fusion import NotFusable, Slots, fusable, fuse, regions
from astroclass.training.method import run_losses


def _history(folder):
    return list(csv.DictReader(open(folder / "history.csv")))


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory):
    """'ImageNet' weights for the pretrained setup, offline: a state dict of test_efficientnet in a file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(123)
    bb = timm.create_model("test_efficientnet", num_classes=0, global_pool="")
    path = tmp_path_factory.mktemp("weights") / "test_efficientnet.safetensors"
    save_file({k: v.contiguous() for k, v in bb.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("variant", ["scratch", "pretrained", "pretrained, frozen_bn: batch"])
def test_every_fused_run_equals_the_same_run_trained_alone(tiny_h5, tmp_path, variant, backbone_weights, monkeypatch):
    """CPU, fp32, a tiny timm backbone (with batch-norm layers) and the paper's head. The group mixes the four
    optimisers, λ ∈ {0, 0.1}, γ ∈ {0, 2} and one class-weighted, augmented run; half the runs have 2 epochs and
    patience is 1, so runs stop at different epochs and the group shrinks on the way (rebuilt with the runs
    left, their weights and optimiser moments moved over). Every recorded loss is bit for bit the run's alone."""
    setup = variant.split(",")[0]
    extra = dict(weights=str(backbone_weights), head_epochs=2, unfreeze="params:4",
                 frozen_bn="batch" if "batch" in variant else "moving") if setup == "pretrained" else {}
    combos = list(itertools.product(["rmsprop", "adam", "radam", "sgd"], [0.0, 0.1], [0.0, 2.0]))[::3]
    assert {c[0] for c in combos} == {"rmsprop", "adam", "radam", "sgd"} and {c[1] for c in combos} == {0.0, 0.1} \
        and {c[2] for c in combos} == {0.0, 2.0}
    configs = [RunConfig(dataset=str(tiny_h5), model="test_efficientnet", setup=setup, optimizer=o, l2=l2, maxnorm=mn,
                         seed=i, epochs=2 if i % 2 == 0 else 6, patience=1, batch_size=16, amp="off", **extra)
               for i, (o, l2, mn) in enumerate(combos)]
    configs.append(RunConfig(dataset=str(tiny_h5), model="test_efficientnet", setup=setup, optimizer="adam", l2=0.1,
                             seed=7, epochs=2, patience=1, batch_size=16, amp="off", class_weights="balanced",
                             augment=True, augment_shift=0.5, **extra))
    configs.append(RunConfig(dataset=str(tiny_h5), model="test_efficientnet", setup=setup, optimizer="adamw", seed=9,
                             epochs=3, patience=3, batch_size=16, amp="off", schedule="cosine", warmup_epochs=1,
                             label_smoothing=0.1, **extra))
    alone = [train(c, tmp_path / f"alone{i}", progress=False) for i, c in enumerate(configs)]
    finished, sizes = [], []
    build = GroupTrainer._model

    def spy(self, template, states, data):
        sizes.append(len(states))
        return build(self, template, states, data)

    monkeypatch.setattr(GroupTrainer, "_model", spy)
    fused = train_group(configs, [tmp_path / f"fused{i}" for i in range(len(configs))], progress=False,
                        on_finish=lambda i, result, history: finished.append(i))
    assert sorted(finished) == list(range(len(configs)))
    assert sizes[0] == len(configs) and len(sizes) > 1  # the group was rebuilt smaller as runs left
    assert len({r.epochs_run for r in alone}) > 1  # runs left the group at different epochs
    for i, (a, f) in enumerate(zip(alone, fused)):
        assert f.status == "done" and f.environment["speed"]["fused"] == len(configs)
        assert (f.best_epoch, f.epochs_run, f.stopped_early) == (a.best_epoch, a.epochs_run, a.stopped_early), i
        ha, hf = _history(tmp_path / f"alone{i}"), _history(tmp_path / f"fused{i}")
        assert [(r["phase"], r["epoch"]) for r in ha] == [(r["phase"], r["epoch"]) for r in hf]
        for ra, rf in zip(ha, hf):
            for key in ("train_loss", "val_loss"):
                assert rf[key] == ra[key], (i, ra, rf)  # bit for bit
        assert f.test["confusion_matrix"] == a.test["confusion_matrix"], i
    # the runs really differ from each other: fusion did not give them one shared model
    assert len({round(float(_history(tmp_path / f"fused{i}")[0]["train_loss"]), 6) for i in range(len(configs))}) \
        == len(configs)


def test_a_kept_model_reinitialised_in_place_trains_as_a_fresh_one(tiny_h5, tmp_path):
    """A worker keeps its built model between groups: a group trained on the kept model (after another
    group used it) gets exactly what it gets in a fresh worker."""
    def cfgs(seed0):
        return [RunConfig(dataset=str(tiny_h5), model="test_resnet", optimizer=o, seed=seed0 + i, epochs=2, patience=2,
                          batch_size=16, amp="off") for i, o in enumerate(["adam", "rmsprop"])]

    cache = WorkerCache()
    train_group(cfgs(0), [tmp_path / "a0", tmp_path / "a1"], progress=False, cache=cache)
    (kept_model, _, _), = [v for v in cache.models._items.values()]
    again = train_group(cfgs(10), [tmp_path / "b0", tmp_path / "b1"], progress=False, cache=cache)
    assert [v[0] for v in cache.models._items.values()] == [kept_model]  # the same model object, reused
    fresh = train_group(cfgs(10), [tmp_path / "c0", tmp_path / "c1"], progress=False)
    for i in range(2):
        assert _history(tmp_path / f"b{i}") == [{**r, "seconds": h["seconds"]} for r, h in
                                                zip(_history(tmp_path / f"c{i}"), _history(tmp_path / f"b{i}"))]
        assert again[i].test == fresh[i].test


@pytest.mark.parametrize("name, channels_last, matmul, size, grouped_regions", [
    ("test_resnet", False, False, 32, 5), ("test_resnet", True, True, 32, 2), ("test_efficientnet", True, False, 32, 0),
    ("vgg11", True, False, 32, 1), ("densenet121", True, False, 32, 61), ("inception_v3", False, False, 76, 94)])
def test_grouped_kernels_compute_each_run_as_alone(name, channels_last, matmul, size, grouped_regions):
    """The GPU path's grouped convolutions, batch-norm regrouping, grouped regions (blocks run in the grouped
    layout: VGG's features, ResNet blocks, DenseNet layers, conv-norm-act blocks) and batched matrix products
    give each run the outputs, gradients and running statistics of its own model, up to rounding. The test
    runs in float64, so that fp32 rounding neither hides a wrong layout nor fails a badly conditioned model:
    InceptionV3's batch norms over 4 images of 1x1 pixels amplify fp32 rounding to 4e-3. (Per-run kernels,
    the CPU path, are bit for bit: the test above.)"""
    from astroclass.models import build_model, matmul_1x1

    g, b = 3, 8 if size < 64 else 4
    models = []
    for seed in range(g):
        torch.manual_seed(seed)
        m = build_model(name, 3, input_size=size)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        if matmul:
            matmul_1x1(m)
        models.append(m.double().train())
    fused = fuse(models[0], [m.state_dict() for m in models], grouped=True).train()
    assert len(regions(fused)) == grouped_regions  # (the 1x1-as-matmul layers keep their own layout: no region)
    slots = Slots(fused)
    torch.manual_seed(0)
    x = torch.rand(g * b, 3, size, size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (g * b,))
    masks = (torch.rand(g * b, 2048) < 0.5).double() * 2
    logits = fused(x, masks)
    run_losses(logits, y, torch.ones(g, 3, dtype=torch.float64)).sum().backward()
    names = [n for n, _ in fused.named_parameters()]
    slots.bind_grads(names)
    for r, m in enumerate(models):
        sl = slice(r * b, (r + 1) * b)
        out = m(x[sl], masks[sl])
        torch.testing.assert_close(logits[sl], out, rtol=1e-9, atol=1e-11)
        run_losses(out, y[sl], torch.ones(1, 3, dtype=torch.float64)).sum().backward()
        views = slots.views(r)
        # rounding is judged against the run's largest gradient: some gradients are pure rounding noise (a
        # batch-norm bias followed by another batch-norm has a true gradient of 0)
        scale = max(p.grad.abs().max().item() for p in m.parameters())
        for n, p in m.named_parameters():
            torch.testing.assert_close(views[n].grad, p.grad, rtol=1e-9, atol=1e-11 * scale, msg=n)
        for n, buf in m.named_buffers():
            if buf.dtype.is_floating_point and n not in ("mean", "std"):
                torch.testing.assert_close(views[n], buf, rtol=1e-9, atol=1e-11, msg=n)


def test_layers_fusion_cannot_batch_are_refused_by_name():
    from astroclass.models import build_model

    gn = build_model("test_efficientnet_gn", 2, input_size=32)  # group norm: not batched by fusion
    assert not fusable(gn)
    with pytest.raises(NotFusable, match="backbone.bn1: cannot fuse runs of a model with a GroupNormAct layer"):
        fuse(gn, [gn.state_dict(), gn.state_dict()])
    assert fusable(build_model("test_resnet", 2, input_size=32))


def test_group_of_runs_that_differ_in_shared_options_is_refused(tiny_h5, tmp_path):
    from astroclass.errors import AstroclassError

    a = RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=1)
    with pytest.raises(AstroclassError, match="must share dataset, model, setup, batch size"):
        train_group([a, RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=1, batch_size=8)],
                    [tmp_path / "a", tmp_path / "b"], progress=False)


def test_optimiser_moments_move_exactly_and_in_the_parameters_layout_when_the_group_shrinks(tiny_h5, tmp_path,
                                                                                          monkeypatch):
    """When runs leave and the group is rebuilt, each remaining run's optimiser state moves to its new parameter
    views unchanged, laid out as the parameters are (channels-last convolution weights included: PyTorch's fused
    Adam walks parameter and state in memory order, so a state tensor in another layout would be updated from
    the wrong elements)."""
    from astroclass.training.loop import GroupTrainer as Trainer

    checked = []
    compact = Trainer._compact

    def moments(trainer, r):
        return [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in r.opt.state[p].items()}
                for p in trainer.slots.parameters(r.slot, trainer.names)]

    def spy(self):
        before = {r.index: moments(self, r) for r in self._live()}
        g = self.slots.runs
        compact(self)
        if self.slots.runs == g:
            return
        for r in self._live():
            for old, new in zip(before[r.index], moments(self, r), strict=True):
                assert old.keys() == new.keys()
                for k in old:
                    assert torch.equal(torch.as_tensor(old[k]), torch.as_tensor(new[k])), (r.index, k)
        for opt in self.optimizers:
            for p in opt.param_groups[0]["params"]:
                for k, v in opt.state[p].items():
                    if isinstance(v, torch.Tensor) and v.dim():
                        assert v.stride() == p.stride(), (type(opt).__name__, k, p.shape)
        checked.append((g, self.slots.runs))

    monkeypatch.setattr(Trainer, "_compact", spy)
    plan = [("adam", 1), ("rmsprop", 3), ("adam", 3), ("adam", 1), ("rmsprop", 1), ("adam", 3)]
    configs = [RunConfig(dataset=str(tiny_h5), model="test_resnet", optimizer=o, seed=i, epochs=e, patience=e,
                         batch_size=16, amp="off") for i, (o, e) in enumerate(plan)]
    results = train_group(configs, [tmp_path / f"r{i}" for i in range(len(configs))], progress=False)
    assert checked == [(6, 3)] and all(r.status == "done" for r in results)
    conv = torch.load(tmp_path / "r2" / "checkpoint.pt", weights_only=True)["state_dict"]["backbone.conv1.0.weight"]
    assert conv.shape[1] == 3 and conv.shape[2] > 1  # a convolution whose channels-last layout differs


def test_max_norm_is_applied_in_training_to_each_run_with_its_own_gamma(tiny_h5, tmp_path):
    """SGD with a large learning rate pushes the hidden units' weight norms up (measured: to 3.0); γ = 2 holds
    them at 2 in the run that asks for it, not in its fused neighbour with γ = 0 (same seed), nor alone."""
    base = dict(dataset=str(tiny_h5), model="test_resnet", optimizer="sgd", lr=1.0, epochs=2, patience=2,
                batch_size=16, amp="off", seed=0)
    configs = [RunConfig(**base, maxnorm=2.0), RunConfig(**base, maxnorm=0.0)]
    train_group(configs, [tmp_path / "g2", tmp_path / "g0"], progress=False)

    def norms(folder):
        state = torch.load(folder / "checkpoint.pt", weights_only=True)["state_dict"]
        return state["hidden.weight"].norm(dim=1)

    assert norms(tmp_path / "g2").max() <= 2.0 + 1e-5
    assert norms(tmp_path / "g0").max() > 2.5  # without the constraint the same training exceeds it
    train(RunConfig(**base, maxnorm=0.0), tmp_path / "alone0", progress=False)
    assert norms(tmp_path / "alone0").max() > 2.5


def test_streamed_fused_runs_equal_the_same_streamed_runs_trained_alone(tiny_h5, tmp_path, monkeypatch):
    """Over their memory budget, with windows smaller than the training split: each run of a fused group walks
    its own windows of blocks (its own order), and gets what it gets alone."""
    import astroclass.training.data as data_mod

    monkeypatch.setattr(data_mod, "stream_window", lambda budget, image_bytes: 16)
    configs = [RunConfig(dataset=str(tiny_h5), model="test_efficientnet", optimizer=o, seed=i, epochs=2, patience=2,
                         batch_size=16, amp="off", max_memory="100KB") for i, o in enumerate(["adam", "sgd", "adam"])]
    alone = [train(c, tmp_path / f"alone{i}", progress=False) for i, c in enumerate(configs)]
    fused = train_group(configs, [tmp_path / f"fused{i}" for i in range(len(configs))], progress=False)
    for i, (a, f) in enumerate(zip(alone, fused)):
        assert a.storage == f.storage == "stream" and f.environment["speed"]["fused"] == len(configs)
        for ra, rf in zip(_history(tmp_path / f"alone{i}"), _history(tmp_path / f"fused{i}")):
            for key in ("train_loss", "val_loss"):
                assert rf[key] == ra[key], (i, ra, rf)  # bit for bit
        assert f.test["confusion_matrix"] == a.test["confusion_matrix"], i


def test_fused_runs_with_an_averaged_model_equal_the_same_runs_alone(tiny_h5, tmp_path):
    """ema in a fused group: each run's average is its own, also after runs leave and the group is rebuilt."""
    configs = [RunConfig(dataset=str(tiny_h5), model="test_efficientnet", optimizer=o, seed=i, epochs=e, patience=e,
                         batch_size=16, amp="off", ema=0.8) for i, (o, e) in enumerate([("adam", 2), ("sgd", 4),
                                                                                          ("adam", 4), ("rmsprop", 2)])]
    alone = [train(c, tmp_path / f"alone{i}", progress=False) for i, c in enumerate(configs)]
    fused = train_group(configs, [tmp_path / f"fused{i}" for i in range(len(configs))], progress=False)
    for i, (a, f) in enumerate(zip(alone, fused)):
        assert f.environment["speed"]["fused"] == len(configs) and f.best_epoch == a.best_epoch
        for ra, rf in zip(_history(tmp_path / f"alone{i}"), _history(tmp_path / f"fused{i}")):
            for key in ("train_loss", "val_loss"):
                assert rf[key] == ra[key], (i, ra, rf)  # bit for bit
        assert f.test["confusion_matrix"] == a.test["confusion_matrix"], i


def test_the_step_graph_path_trains_each_run_exactly_as_the_eager_step(tiny_h5, tmp_path, monkeypatch):
    """``compile: step-graph`` runs each epoch's training step on static input tensors through the one step function
    a CUDA graph captures on a GPU (off a GPU nothing is captured). A fused group of the four optimisers with λ, γ and
    an augmented run gets bit for bit the histories and test results of the default path. The step (its graph on a
    GPU) is kept from epoch to epoch while the same runs step: one for the group's first 2 epochs, one more once two
    runs have left. A run whose learning rate changes every step is not captured, and result.json says why."""
    from astroclass.training import loop

    combos = [("rmsprop", 0.0, 2.0), ("adam", 0.1, 0.0), ("radam", 0.1, 2.0), ("sgd", 0.0, 0.0)]
    base = dict(dataset=str(tiny_h5), model="test_resnet", patience=4, batch_size=16, amp="off")
    configs = [RunConfig(**base, optimizer=o, l2=l2, maxnorm=mn, seed=i, augment=i == 1, epochs=2 + i % 2)
               for i, (o, l2, mn) in enumerate(combos)]
    eager = train_group(configs, [tmp_path / f"eager{i}" for i in range(4)], progress=False)
    built = []

    class Counted(loop.StepGraph):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            built.append(self)

    monkeypatch.setattr(loop, "StepGraph", Counted)
    graph = train_group([dataclasses.replace(c, compile="step-graph") for c in configs],
                        [tmp_path / f"graph{i}" for i in range(4)], progress=False)
    assert len(built) == 2 and [g.calls for g in built] == [2 * 4, 4]  # 64 training images: 4 full batches per epoch

    def timeless(folder):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in _history(folder)]

    for i, (a, b) in enumerate(zip(eager, graph)):
        assert b.status == "done" and b.environment["speed"]["compile"] == "step-graph"
        steps = b.environment["speed"]["step_graph"]
        assert steps["replayed_steps"] == 0 and steps["eager_steps"] > 0
        assert "need a CUDA device" in steps["not_captured"]
        assert timeless(tmp_path / f"graph{i}") == timeless(tmp_path / f"eager{i}"), i
        assert b.test == a.test, i
    cosine = train(RunConfig(**base, compile="step-graph", schedule="cosine"), tmp_path / "cosine", progress=False)
    assert "learning rate changes every step" in cosine.environment["speed"]["step_graph"]["not_captured"]


def test_steps_that_drop_their_gradients_train_each_run_as_the_default_step(tiny_h5, tmp_path, monkeypatch):
    """Under torch.compile's CUDA graphs (``compile: reduce-overhead`` or ``max-autotune`` on a GPU) a gradient is
    an output of the previous step's graph, whose memory the next replay reuses, so each step drops the gradients
    instead of zeroing them in place, and every run's gradient views are bound to the new ones. Off a GPU that
    path is taken here for an eager step: a fused group of the four optimisers (and a run alone) gets bit for bit
    the default path's histories and test results."""
    from astroclass.training import loop

    combos = [("rmsprop", 0.0, 2.0), ("adam", 0.1, 0.0), ("radam", 0.1, 2.0), ("sgd", 0.0, 0.0)]
    configs = [RunConfig(dataset=str(tiny_h5), model="test_resnet", epochs=2, patience=2, batch_size=16, amp="off",
                         optimizer=o, l2=l2, maxnorm=mn, seed=i) for i, (o, l2, mn) in enumerate(combos)]
    kept = train_group(configs, [tmp_path / f"kept{i}" for i in range(4)], progress=False)
    kept.append(train(configs[1], tmp_path / "kept4", progress=False))
    dropped_grads = []
    zero = Slots.zero_grads

    def spy(self, set_to_none=False):
        zero(self, set_to_none)
        dropped_grads.append(set_to_none and all(p.grad is None for p in self.model.parameters()))

    monkeypatch.setattr(Slots, "zero_grads", spy)
    monkeypatch.setattr(loop, "TORCH_CUDA_GRAPHS", (None,))  # this eager step (compile off) as the compiled one
    dropped = train_group(configs, [tmp_path / f"dropped{i}" for i in range(4)], progress=False)
    dropped.append(train(configs[1], tmp_path / "dropped4", progress=False))
    assert dropped_grads and all(dropped_grads)
    for i, (a, b) in enumerate(zip(kept, dropped)):
        assert [{k: v for k, v in row.items() if k != "seconds"} for row in _history(tmp_path / f"dropped{i}")] \
            == [{k: v for k, v in row.items() if k != "seconds"} for row in _history(tmp_path / f"kept{i}")], i
        assert b.test == a.test, i


def test_each_result_says_where_its_groups_time_went(tiny_h5, tmp_path):
    """environment.seconds: the group's set-up, training, validation and rebuilding up to the run's leaving, and the
    run's own final evaluation and checkpoint. Each epoch's recorded seconds are its training and validation, so
    the run's history sums to the group's training and validation it saw."""
    import time

    configs = [RunConfig(dataset=str(tiny_h5), model="test_resnet", seed=i, epochs=e, patience=e, batch_size=16,
                         amp="off") for i, e in enumerate([1, 1, 3, 3])]
    t0 = time.perf_counter()
    results = train_group(configs, [tmp_path / f"r{i}" for i in range(len(configs))], progress=False)
    wall = time.perf_counter() - t0
    early, late = [r.environment["seconds"] for r in results[:2]], [r.environment["seconds"] for r in results[2:]]
    for i, (r, s) in enumerate(zip(results, early + late)):
        assert set(s) == {"setup", "train", "validation", "regroup", "final_predict", "final_metrics", "checkpoint"}
        assert all(v >= 0 for v in s.values()) and s["train"] > 0 and s["validation"] > 0 and s["setup"] > 0
        assert s["setup"] == r.environment["setup_seconds"]
        epochs = sum(float(h["seconds"]) for h in _history(tmp_path / f"r{i}"))
        assert abs(epochs - (s["train"] + s["validation"])) < 0.01, (i, epochs, s)
    assert all(s["regroup"] == 0 for s in early)  # they left before the group was rebuilt (2 of 4 slots idle)
    assert all(s["regroup"] > 0 for s in late)
    assert all(s["train"] > e["train"] for s in late for e in early)  # the group's training up to each run's leaving
    group = late[0]["setup"] + late[0]["train"] + late[0]["validation"] + late[0]["regroup"]
    assert group + sum(s[k] for s in early + late for k in ("final_predict", "final_metrics", "checkpoint")) < wall


@pytest.mark.parametrize("name", ["resnext50_32x4d", "inception_resnet_v2"])
def test_grouped_kernels_in_bf16_train_each_run_as_alone_to_rounding(name, tiny_h5, small76_h5, tmp_path,
                                                                     monkeypatch):
    """The GPU's fused path on a CPU: grouped kernels and bf16 autocast, through the whole trainer, fine-tuning
    the paper's last 7 Keras layers of ResNeXt50 (at 32 px) and InceptionResNetV2 (at 76 px, its smallest),
    weights from a file. Fused runs are not bit for bit the runs alone here (another order of sums, bf16
    rounding, which an optimiser's step amplifies): their training losses agree to 2%, their validation losses
    after the step to 10%, their test probabilities to 0.15."""
    import numpy as np
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    bb = timm.create_model(name, num_classes=0, global_pool="")
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in bb.state_dict().items()}, str(weights))
    real = RunConfig.speed

    def grouped_bf16(self, device):
        return {**real(self, device), "grouped_kernels": True, "amp": torch.bfloat16, "channels_last": True}

    monkeypatch.setattr(RunConfig, "speed", grouped_bf16)
    data = small76_h5 if name == "inception_resnet_v2" else tiny_h5
    configs = [RunConfig(dataset=str(data), model=name, setup="pretrained", weights=str(weights), unfreeze="keras:7",
                         head_epochs=0, epochs=1, batch_size=16, seed=s, finetune_optimizer=o)
               for s, o in ((0, "sgd"), (1, "adamw"))]
    alone = [train(c, tmp_path / f"alone{i}", progress=False) for i, c in enumerate(configs)]
    fused = train_group(configs, [tmp_path / f"fused{i}" for i in range(2)], progress=False)
    for i, (a, f) in enumerate(zip(alone, fused)):
        assert a.status == f.status == "done"
        assert f.environment["speed"]["grouped_kernels"] and f.environment["speed"]["amp"]
        ha, hf = _history(tmp_path / f"alone{i}"), _history(tmp_path / f"fused{i}")
        assert [(r["phase"], r["epoch"]) for r in ha] == [(r["phase"], r["epoch"]) for r in hf] == [("finetune", "1")]
        for key, rel in (("train_loss", 0.02), ("val_loss", 0.1)):
            assert float(hf[0][key]) == pytest.approx(float(ha[0][key]), rel=rel), (i, key, ha, hf)
        pa, pf = (np.load(tmp_path / f"{k}{i}" / "predictions.npz")["test_probs"] for k in ("alone", "fused"))
        np.testing.assert_allclose(pf, pa, atol=0.15)
