"""The comparison grid: spec expansion, the store, exactly-once under SIGKILL and concurrency, engines."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from astroclass.data import PreparedDataset
from astroclass.errors import AstroclassError
from astroclass.experiments import GridOptions, GridSpec, Store, run_grid
from astroclass.experiments.status import export, grid_status
from conftest import two_node_ray

REPO = Path(__file__).resolve().parents[1]


def write_spec(tmp_path: Path, dataset: Path, name: str = "t", **over) -> Path:
    d = {"name": name, "datasets": {"SG": str(dataset)}, "models": ["test_resnet"], "setups": ["scratch"],
         "l2": [0.0, 0.1], "maxnorm": [0.0], "optimizers": ["adam"], "seeds": [0],
         "train": {"epochs": 1, "batch_size": 16, "patience": 1}}
    d.update(over)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_paper_spec_expands_to_600_runs_per_seed_with_stable_ids(tmp_path):
    spec = GridSpec.load("paper")
    runs = spec.expand()
    assert len(runs) == 600 and len({r.id for r in runs}) == 600
    assert {r.dataset for r in runs} == {"SG", "MG", "EF-2", "EF-4", "EF-15"}
    assert sum(1 for r in runs if r.dataset == "SG" and r.config["model"] == "vgg16") == 24
    assert [r.id for r in GridSpec.load("paper").expand()] == [r.id for r in runs]
    two = yaml.safe_load(GridSpec.load("paper").to_yaml())
    two["seeds"] = [0, 1]
    (tmp_path / "p2.yaml").write_text(yaml.safe_dump(two))
    runs2 = GridSpec.load(tmp_path / "p2.yaml").expand()
    assert len(runs2) == 1200 and {r.id for r in runs} < {r.id for r in runs2}
    # the device does not change what is computed, so not the id either
    two["train"]["device"] = "cuda"
    (tmp_path / "p3.yaml").write_text(yaml.safe_dump(two))
    assert {r.id for r in GridSpec.load(tmp_path / "p3.yaml").expand()} == {r.id for r in runs2}


@pytest.mark.parametrize("change, message", [
    ({"optimisers": ["adam"]}, "unknown key(s) ['optimisers']"),
    ({"optimizers": ["lamb"]}, "'lamb' is not one of ['rmsprop', 'adam', 'radam', 'sgd', 'adamw']"),
    ({"setups": ["finetune"]}, "'finetune' is not one of ['scratch', 'pretrained']"),
    ({"train": {"epoch": 3}}, "unknown train option(s) ['epoch']"),
    ({"l2": ["none"]}, "l2: 'none' is not a finite number"),
    ({"models": ["vgg61"]}, "unknown model 'vgg61'"),
])
def test_bad_specs_name_the_key_and_allowed_values(tmp_path, change, message):
    path = write_spec(tmp_path, tmp_path / "x.h5", **change)
    with pytest.raises(AstroclassError) as err:
        GridSpec.load(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_local_grid_runs_once_keeps_best_checkpoint_and_exports(tiny_h5, tmp_path):
    spec = GridSpec.load(write_spec(tmp_path, tiny_h5))
    exp = tmp_path / "exp"
    counts = run_grid(spec, exp, GridOptions(keep="best", threads=1), progress=False)
    assert counts == {"pending": 0, "running": 0, "done": 2, "failed": 0}
    store = Store(exp / "store.sqlite")
    runs = store.runs()
    assert all(r["attempts"] == 1 and r["metrics"]["test"]["n"] > 0 for r in runs)
    assert all(len(store.history(r["id"])) == r["metrics"]["epochs_run"] for r in runs)
    ckpts = sorted(exp.glob("runs/*/checkpoint.pt"))
    assert len(ckpts) == 1  # one (dataset, model, setup) cell: only its best run keeps a checkpoint
    best = max(runs, key=lambda r: r["metrics"]["val"]["accuracy"])
    assert ckpts[0].parent.name == best["id"]
    assert all((exp / "runs" / r["id"] / "predictions.npz").exists() for r in runs)
    # a second run of the same spec has nothing to do
    assert run_grid(spec, exp, GridOptions(threads=1), progress=False)["done"] == 2
    assert all(r["attempts"] == 1 for r in Store(exp / "store.sqlite").runs())
    st = grid_status(spec, store)
    assert st["counts"]["done"] == 2 and st["datasets"]["SG"] == {"done": 2, "total": 2}
    out = export(store, tmp_path / "runs.csv")
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("id,dataset,model")


def test_fused_grid_records_every_run_as_alone_and_falls_back_for_models_fusion_cannot_batch(tiny_h5, tmp_path):
    import csv

    spec = GridSpec.load(write_spec(tmp_path, tiny_h5, models=["test_resnet", "test_efficientnet_gn"],
                                    optimizers=["adam", "sgd"],
                                    train={"epochs": 2, "batch_size": 16, "patience": 2, "amp": "off"}))
    counts = run_grid(spec, tmp_path / "fused", GridOptions(threads=1, fuse="4"), progress=False)
    assert counts == {"pending": 0, "running": 0, "done": 8, "failed": 0}
    alone = run_grid(spec, tmp_path / "alone", GridOptions(threads=1, fuse="off"), progress=False)
    assert alone == counts
    fused_runs = {r["id"]: r for r in Store(tmp_path / "fused" / "store.sqlite").runs()}
    for r in Store(tmp_path / "alone" / "store.sqlite").runs():
        f = fused_runs[r["id"]]
        group = f["metrics"]["environment"]["speed"]["fused"]
        assert group == (4 if r["model"] == "test_resnet" else 1)  # group norm cannot be fused: one by one
        assert r["metrics"]["environment"]["speed"]["fused"] == 1
        assert f["metrics"]["test"]["confusion_matrix"] == r["metrics"]["test"]["confusion_matrix"]
        assert f["metrics"]["best_epoch"] == r["metrics"]["best_epoch"]
        for a, b in zip(csv.DictReader(open(tmp_path / "alone" / "runs" / r["id"] / "history.csv")),
                        csv.DictReader(open(tmp_path / "fused" / "runs" / r["id"] / "history.csv"))):
            assert float(b["val_loss"]) == pytest.approx(float(a["val_loss"]), rel=1e-4)
    _folder_matches_store(tmp_path / "fused")


def test_changed_or_missing_dataset_is_refused(tiny_h5, tmp_path):
    import shutil

    from astroclass.data import import_folder

    data = tmp_path / "sg.h5"
    shutil.copy(tiny_h5, data)
    spec = GridSpec.load(write_spec(tmp_path, data, l2=[0.0]))
    exp = tmp_path / "exp"
    run_grid(spec, exp, GridOptions(threads=1), progress=False)
    # replace the file by different data under the same name
    root = tmp_path / "tree"
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    import_folder(root, data, overwrite=True, show_progress=False, min_per_class=1)
    with pytest.raises(AstroclassError, match="dataset SG: .* refusing to mix"):
        run_grid(GridSpec.load(write_spec(tmp_path, data, l2=[0.0])), exp, GridOptions(threads=1), progress=False)
    with pytest.raises(AstroclassError, match="dataset SG: .*nowhere.h5 not found"):
        run_grid(GridSpec.load(write_spec(tmp_path, tmp_path / "nowhere.h5")), tmp_path / "exp2", progress=False)


def test_unwritable_experiment_folder_and_full_disk_keep_the_store_intact(tiny_h5, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    spec = GridSpec.load(write_spec(tmp_path, tiny_h5))
    with pytest.raises(AstroclassError, match="not writable"):
        run_grid(spec, blocker / "exp", progress=False)
    exp = tmp_path / "exp"
    run_grid(GridSpec.load(write_spec(tmp_path, tiny_h5, l2=[0.0])), exp, GridOptions(threads=1), progress=False)
    store = Store(exp / "store.sqlite")
    before = store.runs()
    # SQLite's own "database or disk is full": cap the file at its current size
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")
    runs = spec.expand()
    with pytest.raises(AstroclassError, match="full"):
        for _ in range(50):  # fill the last free page
            store.add_runs(runs)
            runs = [type(r)(r.id + "x", {**r.config, "seed": r.config["seed"] + 1}) for r in runs]
    store.close()
    again = Store(exp / "store.sqlite")
    assert again.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [r["id"] for r in again.runs(status="done")] == [r["id"] for r in before]


def _grid_process(spec: Path, exp: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "astroclass.cli", "grid", "run", str(spec), "-e", str(exp), "-q",
                             "--threads", "1", *extra], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _statuses(exp: Path) -> dict[str, int]:
    if not (exp / "store.sqlite").exists():
        return {}
    try:
        db = sqlite3.connect(exp / "store.sqlite", timeout=30)
        rows = dict(db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        db.close()
        return rows
    except sqlite3.OperationalError:
        return {}


def _grid_started(spec: Path, exp: Path, *extra: str) -> subprocess.Popen:
    """A grid process, once at least 2 of its runs are done and at least 1 is running."""
    proc = _grid_process(spec, exp, *extra)
    deadline = time.time() + 240
    while time.time() < deadline:
        s = _statuses(exp)
        if s.get("done", 0) >= 2 and s.get("running", 0) >= 1:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"grid never reached a state to kill: {_statuses(exp)}; output {proc.communicate()[0][-2000:]}")
    return proc


def test_sigkill_mid_grid_then_resume_loses_nothing_and_duplicates_nothing(tiny_h5, tmp_path):
    spec_path = write_spec(tmp_path, tiny_h5, l2=[0.0, 0.1], maxnorm=[0.0, 2.0], optimizers=["adam", "rmsprop"],
                           train={"epochs": 3, "batch_size": 16, "patience": 3})
    exp = tmp_path / "exp"
    proc = _grid_started(spec_path, exp, "--workers", "2")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, at once
    proc.wait()
    store = Store(exp / "store.sqlite")
    done_before = {r["id"]: r["metrics"] for r in store.runs(status="done")}
    interrupted = {r["id"] for r in store.runs(status="running")}
    assert len(done_before) >= 2 and interrupted
    # resume: the dead runner's runs are claimed again (its pid is gone), finished ones are not re-run
    counts = run_grid(GridSpec.load(spec_path), exp, GridOptions(threads=1, workers=2), progress=False)
    assert counts == {"pending": 0, "running": 0, "done": 8, "failed": 0}
    after = {r["id"]: r for r in Store(exp / "store.sqlite").runs()}
    assert len(after) == 8
    for rid, metrics in done_before.items():
        assert after[rid]["metrics"] == metrics and after[rid]["attempts"] == 1
    for rid in interrupted:  # a kill is not a failed attempt: it does not use one up
        assert after[rid]["attempts"] == 1
    for rid, r in after.items():
        hist = store.history(rid)
        assert len(hist) == r["metrics"]["epochs_run"] == len({(h["phase"], h["epoch"]) for h in hist})


def _folder_matches_store(exp: Path) -> None:
    import json

    for r in Store(exp / "store.sqlite").runs():
        folder = exp / "runs" / r["id"]
        if r["status"] in ("done", "failed"):
            saved = json.loads((folder / "result.json").read_text())
            assert saved["status"] == r["status"], r["id"]
            if r["status"] == "done":
                assert saved["val"] == r["metrics"]["val"] and saved["test"] == r["metrics"]["test"], r["id"]
                assert saved["best_epoch"] == r["metrics"]["best_epoch"], r["id"]
            assert not list(folder.glob(".attempt-*")), r["id"]


def test_sigkill_of_the_parent_alone_kills_its_workers_and_the_folder_matches_the_store(tiny_h5, tmp_path):
    spec_path = write_spec(tmp_path, tiny_h5, l2=[0.0, 0.1], maxnorm=[0.0, 2.0], optimizers=["adam", "rmsprop"],
                           train={"epochs": 4, "batch_size": 16, "patience": 4})
    exp = tmp_path / "exp"
    proc = _grid_started(spec_path, exp, "--workers", "2", "--fuse", "2")
    os.kill(proc.pid, signal.SIGKILL)  # the driver only: its workers must not train on
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anything left of the driver's process group?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("worker processes outlived their killed driver")
    _folder_matches_store(exp)
    counts = run_grid(GridSpec.load(spec_path), exp, GridOptions(threads=1, workers=2), progress=False)
    assert counts == {"pending": 0, "running": 0, "done": 8, "failed": 0}
    _folder_matches_store(exp)
    assert all(r["attempts"] == 1 for r in Store(exp / "store.sqlite").runs())


def test_two_runners_on_one_store_execute_each_run_once(tiny_h5, tmp_path):
    # 3 epochs per run: the grid outlasts the start-up skew of two runners on a loaded machine, so both get work
    spec_path = write_spec(tmp_path, tiny_h5, l2=[0.0, 0.1], optimizers=["adam", "rmsprop", "radam"],
                           train={"epochs": 3, "batch_size": 16, "patience": 3})
    exp = tmp_path / "exp"
    # one worker each: a runner holds one pair at a time, so the other finds work too
    a, b = (_grid_process(spec_path, exp, "--fuse", "2", "--workers", "1") for _ in range(2))
    outs = [p.communicate(timeout=300)[0].decode() for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    runs = Store(exp / "store.sqlite").runs()
    assert len(runs) == 6 and all(r["status"] == "done" and r["attempts"] == 1 for r in runs)
    assert len({r["token"].split("-")[0] for r in runs}) == 2  # both runners did work
    assert {len([r for r in runs if r["token"] == t]) for t in {r["token"] for r in runs}} == {2}  # claimed in pairs
    _folder_matches_store(exp)


def test_grid_cli_status_and_export(cli, tiny_h5, tmp_path):
    spec_path = write_spec(tmp_path, tiny_h5, l2=[0.0])
    exp = tmp_path / "exp"
    code, out, err = cli("grid", "run", spec_path, "-e", exp, "-q", "--threads", "1")
    assert code == 0, err
    code, out, _ = cli("grid", "status", spec_path, "-e", exp)
    assert code == 0 and "done 1" in out and "SG" in out
    code, out, _ = cli("grid", "export", exp, "-o", tmp_path / "r.csv")
    assert code == 0 and (tmp_path / "r.csv").exists()
    code, _, err = cli("grid", "status", spec_path, "-e", tmp_path / "nothing")
    assert code == 1 and "no results store" in err
    code, _, err = cli("grid", "run", "nonexistent.yaml")
    assert code == 1 and "built-in spec" in err
    code, _, err = cli("grid", "run", spec_path, "-e", tmp_path / "exp2", "-q", "--lease", "-1")
    assert code == 1 and "--lease must be a positive number of seconds" in err  # two runners would steal runs
    # the ETA: no more runs at once than are left (one run left takes one run's time, however many workers)
    store = Store(exp / "store.sqlite")
    bigger = GridSpec.load(write_spec(tmp_path, tiny_h5, name="t2", l2=[0.0, 0.1]))  # its λ = 0 run is done
    st = grid_status(bigger, store, slots=4)
    assert st["counts"]["pending"] == 1 and st["eta_seconds"] == pytest.approx(st["mean_run_seconds"])
    assert grid_status(GridSpec.load(write_spec(tmp_path, tiny_h5, name="t3", l2=[0.0, 0.1, 0.2, 0.3, 0.4])),
                       store, slots=2)["eta_seconds"] == pytest.approx(2 * st["mean_run_seconds"])
    store.close()


@pytest.mark.slow
def test_ray_engine_gives_the_same_results_table_as_local(tiny_h5, tmp_path, monkeypatch):
    import ray
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    spec = GridSpec.load(write_spec(tmp_path, tiny_h5, train={"epochs": 2, "batch_size": 16, "patience": 2}))
    local = run_grid(spec, tmp_path / "local", GridOptions(threads=1), progress=False)
    try:
        remote = run_grid(spec, tmp_path / "ray", GridOptions(engine="ray", threads=1, ray_num_cpus=2), progress=False)
    finally:
        ray.shutdown()
    assert local == remote == {"pending": 0, "running": 0, "done": 2, "failed": 0}

    def table(exp):
        return sorted((r["id"], r["metrics"]["val"]["accuracy"], r["metrics"]["test"]["accuracy"],
                       r["metrics"]["best_epoch"], r["metrics"]["val"]["confusion_matrix"])
                      for r in Store(exp / "store.sqlite").runs())

    assert table(tmp_path / "local") == table(tmp_path / "ray")


def test_run_ids_ignore_options_left_at_their_defaults():
    from astroclass.experiments.spec import run_id
    from astroclass.training import RunConfig

    base = {"dataset": "SG", "model": "vgg16", "setup": "scratch", "l2": 0.1, "maxnorm": 0.0, "optimizer": "adam",
            "seed": 0}
    full = RunConfig(**base).to_dict()
    assert run_id(full) == run_id(base)  # an option added later, at its default, keeps old ids
    assert run_id({**full, "sampler": "balanced"}) != run_id(full)
    assert run_id({**full, "device": "cuda:3", "eval_batch_size": 1024}) == run_id(full)


def test_a_stored_run_whose_options_differ_from_the_spec_under_the_same_id_is_refused(cli, tiny_h5, tmp_path):
    """Run ids leave defaults out: a run recorded when a default was different has the id of today's run.
    The store keeps every option of every run, and a mismatch stops the grid before anything is touched."""
    import json

    spec = write_spec(tmp_path, tiny_h5, l2=[0.0])
    exp = tmp_path / "exp"
    gs = GridSpec.load(spec)
    s = Store(exp / "store.sqlite")
    s.check_datasets(gs.datasets)
    assert s.add_runs(gs.expand()) == 1
    rid = gs.expand()[0].id
    stored = json.loads(s.db.execute("SELECT config FROM runs").fetchone()[0])
    assert set(stored) == set(gs.expand()[0].config)  # every option, defaults included
    # an older astroclass without the `fuse` option, whose default patience was 20: same id, other run
    older = {k: v for k, v in stored.items() if k != "fuse"}
    s.db.execute("UPDATE runs SET config=? WHERE id=?", (json.dumps({**older, "patience": 20}), rid))
    s.close()
    code, out, err = cli("grid", "run", spec, "-e", exp, "-q", "--threads", "1")
    assert code == 1
    assert f"{rid} (patience: stored 20, now 1)" in err and "A default changed" in err
    assert "Traceback" not in out + err
    s = Store(exp / "store.sqlite")
    assert [x["status"] for x in s.runs()] == ["pending"] and json.loads(
        s.db.execute("SELECT config FROM runs").fetchone()[0])["patience"] == 20
    # an option the older version did not have, at today's default, is no clash
    s.db.execute("UPDATE runs SET config=? WHERE id=?", (json.dumps(older), rid))
    assert s.add_runs(gs.expand()) == 0
    s.close()


def test_cpu_workers_default_to_one_per_core_as_memory_allows():
    from astroclass.experiments.engines import CPU_WORKER_MEMORY, default_cpu_workers

    assert default_cpu_workers(8, 64 * 2**30) == 8  # one per core
    assert default_cpu_workers(8, 10 * CPU_WORKER_MEMORY + 1) == 5  # half the memory; the other half holds images
    assert default_cpu_workers(8, CPU_WORKER_MEMORY // 2) == 1  # never none


def test_cores_and_memory_are_read_within_a_containers_cgroup_limits(tmp_path, monkeypatch):
    """In a container the machine's cores and MemAvailable are the host's; the cgroup's CPU quota and memory limit
    (v2 and v1 layouts, as the kernel writes them) bound what workers and image budgets count on."""
    import astroclass.parallel as par

    machine_cores = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    monkeypatch.setattr(par, "CGROUP", v2)
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "memory.max").write_text("max\n")
    (v2 / "memory.current").write_text("123456789\n")
    assert par.usable_cores() == machine_cores and par._cgroup_memory_left() is None  # no limits: the machine's
    (v2 / "cpu.max").write_text("50000 100000\n")  # --cpus 0.5
    assert par.usable_cores() == 1
    import torch

    from astroclass.training import threads_within_cores

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # torch's own default counts the machine's cores
        assert threads_within_cores() == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    (v2 / "memory.max").write_text(f"{2 * 2**30}\n")  # a 2 GiB limit, 1 GiB used of which 0.25 GiB page cache
    (v2 / "memory.current").write_text(f"{2**30}\n")
    (v2 / "memory.stat").write_text(f"anon 805306368\nfile 268435456\ninactive_file {2**28}\nactive_file 0\n")
    assert par.host_available_memory() == 2 * 2**30 - (2**30 - 2**28)  # a machine running the tests has more
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "memory").mkdir()
    monkeypatch.setattr(par, "CGROUP", v1)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (v1 / "memory" / "memory.usage_in_bytes").write_text("10050420736\n")
    assert par.usable_cores() == machine_cores and par._cgroup_memory_left() is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")  # 1.5 CPUs: 2 threads, where there are 2
    assert par.usable_cores() == min(machine_cores, 2)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{2**30}\n")  # more used than the limit: nothing left
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{3 * 2**30}\n")
    assert par.host_available_memory() == 0


def test_a_cell_splits_evenly_over_idle_workers_and_a_run_has_the_same_threads_wherever_it_falls(tiny_h5, tmp_path):
    """Two CPU workers: a 4-run cell with --fuse 4 becomes two groups of 2 side by side (not 2, then 1 and 1), and
    every run has half the cores (a CPU run's numbers depend on its thread count, so it is fixed per grid); a grid
    of one run has no second worker, so it gets every core."""
    from astroclass.parallel import usable_cores

    cores = usable_cores()
    spec = GridSpec.load(write_spec(tmp_path, tiny_h5, optimizers=["adam", "sgd"]))
    assert run_grid(spec, tmp_path / "cell", GridOptions(workers=2, fuse="4"), progress=False)["done"] == 4
    runs = Store(tmp_path / "cell" / "store.sqlite").runs()
    sizes = {}
    for r in runs:
        sizes[r["token"]] = sizes.get(r["token"], 0) + 1
        assert r["metrics"]["environment"]["speed"]["fused"] == 2
        assert r["metrics"]["environment"]["cpu_threads"] == max(1, cores // 2)
    assert sorted(sizes.values()) == [2, 2]
    one = GridSpec.load(write_spec(tmp_path, tiny_h5, name="one", l2=[0.0]))
    assert run_grid(one, tmp_path / "one", GridOptions(workers=2), progress=False)["done"] == 1
    (run,) = Store(tmp_path / "one" / "store.sqlite").runs()
    assert run["metrics"]["environment"]["cpu_threads"] == cores


def test_local_workers_keep_their_models_are_recycled_and_a_dead_one_is_reported(tiny_h5, tmp_path):
    from astroclass.experiments.engines import LocalEngine
    from astroclass.experiments.workers import GroupJob

    cfg = {"dataset": str(tiny_h5), "model": "test_resnet", "epochs": 1, "batch_size": 16, "amp": "off"}
    engine = LocalEngine(workers=1, threads=1, max_groups=2)

    def run(i, **over):
        engine.submit(GroupJob(f"g{i}", [(f"r{i}", {**cfg, "seed": i, **over}, str(tmp_path / f"r{i}"))], "cpu"))
        pid = engine._busy[0].process.pid
        events = []
        while not any(kind in ("done", "lost") for kind, *_ in events):
            events += engine.wait(timeout=60)
        return pid, events

    try:
        pid0, ev0 = run(0)
        pid1, ev1 = run(1)
        assert pid0 == pid1  # one worker, kept between groups
        outcome0, outcome1 = ev0[0][3]["result"], ev1[0][3]["result"]
        assert outcome0["status"] == outcome1["status"] == "done"
        assert not outcome0["environment"]["worker_model_reused"] and outcome1["environment"]["worker_model_reused"]
        pid2, _ = run(2)
        assert pid2 != pid1  # recycled after max_groups
        engine.submit(GroupJob("g3", [("r3", {**cfg, "epochs": 500, "patience": 500}, str(tmp_path / "r3"))], "cpu"))
        time.sleep(3)
        os.kill(engine._busy[0].process.pid, signal.SIGKILL)  # e.g. the kernel's out-of-memory killer
        events = []
        deadline = time.time() + 60
        while not events and time.time() < deadline:
            events = engine.wait(timeout=5)
        assert events == [("lost", "g3", None, None)]
    finally:
        engine.shutdown(kill=True)


def test_a_store_on_a_network_file_system_is_refused_with_the_reason(tiny_h5, tmp_path, monkeypatch, cli):
    """SQLite's locks do not hold across hosts on NFS/Lustre/CIFS: the store refuses such a folder, names the
    file system and what to do; a single process may opt in."""
    import astroclass.experiments.store as store_mod

    share = tmp_path / "net share"  # /proc/mounts writes the space as \040
    exp = share / "exp"
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda1 / ext4 rw 0 0\n"
                      f"server:/export {str(share).replace(' ', chr(92) + '040')} nfs4 rw,relatime 0 0\n"
                      "proc /proc proc rw 0 0\n")
    monkeypatch.setattr(store_mod, "MOUNTS", str(mounts))
    assert store_mod.filesystem_type(exp / "store.sqlite") == "nfs4"
    assert store_mod.filesystem_type("/proc/self") == "proc" and store_mod.filesystem_type("/usr") == "ext4"
    code, out, err = cli("grid", "run", write_spec(tmp_path, tiny_h5), "-e", exp, "-q")
    assert code == 1 and "on a nfs4 file system" in err and "--engine ray" in err and "Traceback" not in err
    assert not (exp / "store.sqlite").exists()
    monkeypatch.setenv("ASTROCLASS_ALLOW_NETWORK_STORE", "1")
    Store(exp / "store.sqlite").close()


@pytest.mark.slow
def test_a_ray_cluster_without_shared_storage_runs_a_grid_and_the_driver_gets_every_artefact(tiny_h5, tmp_path):
    """Two Ray nodes on this machine, each with its own temp dir, working folder and dataset cache; the head
    node has no CPU for actors, so every run trains on the other node, which does not see the driver's
    folder (spec, dataset and experiment, named by relative paths at the driver) at all."""
    from astroclass.report import build_report

    driver = tmp_path / "driver"
    (driver / "data").mkdir(parents=True)
    shutil.copy(tiny_h5, driver / "data" / "tiny.h5")
    spec = write_spec(driver, Path("data/tiny.h5"), models=["test_resnet", "test_efficientnet"],
                      train={"epochs": 2, "batch_size": 16, "patience": 2})
    with two_node_ray(tmp_path, driver) as cluster:
        # the driver: a relative spec, dataset and experiment folder, none of them in the nodes' folders
        cluster.run(driver, sys.executable, "-m", "astroclass", "grid", "run", spec.name, "-e", "exp", "--engine",
                    "ray", "--ray-address", cluster.address, "--threads", "1", "--keep", "all", "-q")
    head, node = cluster.head, cluster.node
    counts = Store(driver / "exp" / "store.sqlite").counts()
    assert counts == {"pending": 0, "running": 0, "done": 4, "failed": 0}
    runs = Store(driver / "exp" / "store.sqlite").runs()
    for r in runs:
        assert {p.name for p in (driver / "exp" / "runs" / r["id"]).iterdir()} >= {
            "config.yaml", "history.csv", "checkpoint.pt", "predictions.npz", "result.json"}
    with PreparedDataset(tiny_h5) as ds:
        digest = ds.content_hash
    assert [p.name for p in (node / "cache" / "datasets").glob("*.h5")] == [f"{digest}.h5"]  # received once
    assert not (head / "cache").exists() and not (node / "exp").exists() and not (node / "data").exists()
    page = build_report(driver / "exp", driver / "report").read_text()
    assert "exact McNemar test" in page
    plots = {p.name for p in (driver / "report" / "plots").iterdir()}
    assert {"reliability_SG.png", "curves_SG.png", "confusion_SG.png"} <= plots
    assert "gallery_SG.png" in plots or "no misclassified test image" in page


def test_a_shipped_dataset_is_verified_cached_once_and_the_drivers_copy_used_where_visible(tiny_h5, tmp_path,
                                                                                           monkeypatch):
    """The object store stood in by a dict: a node that cannot see the driver's path assembles the file from its
    chunks into its cache, checks it against the driver's sha256, and re-uses it; a damaged transfer is refused
    with the file named and leaves nothing in the cache."""
    from astroclass.experiments import engines

    class Store:
        def __init__(self):
            self.objects, self.gets = {}, 0

        def put(self, value):
            self.objects[len(self.objects)] = value
            return len(self.objects) - 1

        def get(self, ref):
            self.gets += 1
            return self.objects[ref]

    store = Store()
    monkeypatch.setattr(engines, "SHIP_CHUNK", 20_000)  # several chunks
    monkeypatch.setenv("ASTROCLASS_CACHE", str(tmp_path / "node-cache"))
    s = engines.ship_dataset(store, str(tiny_h5))
    assert len(s.chunks) > 2 and s.size == tiny_h5.stat().st_size
    assert engines.receive_dataset(store, s) == str(tiny_h5)  # this "node" sees the driver's file
    assert store.gets == 0
    elsewhere = engines.Shipment("data/not-here.h5", s.content_hash, s.sha256, s.size, s.chunks)
    local = Path(engines.receive_dataset(store, elsewhere))
    assert local.parent == tmp_path / "node-cache" / "datasets" and local.read_bytes() == tiny_h5.read_bytes()
    gets = store.gets
    assert engines.receive_dataset(store, elsewhere) == str(local) and store.gets == gets  # cached: no transfer
    local.unlink()
    store.objects[s.chunks[1]] = b"\0" * len(store.objects[s.chunks[1]])  # damaged on the way
    with pytest.raises(AstroclassError, match=r"not-here\.h5: the copy received on this node differs"):
        engines.receive_dataset(store, elsewhere)
    assert [p.name for p in (tmp_path / "node-cache" / "datasets").iterdir() if p.suffix != ".lock"] == []


def test_reading_a_grid_spec_does_not_import_torch():
    """The grid's spec, options, run ids and the paper's model names come from torch-free modules, so a command that
    only reads a spec (or rejects a bad one) answers without the seconds that importing torch and timm take. The
    paper's spec is read whole: its five backbones' names and both setups' fine-tuning depths checked."""
    code = ("import sys\nimport astroclass.experiments.spec, astroclass.cli\n"
            "spec = astroclass.experiments.spec.GridSpec.load('paper')\n"
            "print(len(spec.expand()), sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "600 []", out.stdout + out.stderr


def test_grid_status_reads_an_experiment_without_importing_torch(tiny_h5, tmp_path):
    """Its runs were checked when they were added: status does not ask timm about a model name that is not one of
    the paper's (with --workers, nothing needs torch at all)."""
    from astroclass.experiments.runner import prepare

    spec = write_spec(tmp_path, tiny_h5)
    prepare(GridSpec.load(spec), tmp_path / "exp")[0].close()
    code = ("import runpy, sys\n"
            f"sys.argv = ['astroclass', 'grid', 'status', {str(spec)!r}, '-e', {str(tmp_path / 'exp')!r}, "
            "'--workers', '2']\n"
            "try:\n    runpy.run_module('astroclass.cli', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "2 runs" in out.stdout and "pending 2, running 0, done 0, failed 0" in out.stdout, out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("nodes, runs, workers, want", [
    ([16, 16], None, None, (32, 1)),  # a big grid: an actor per core
    ([16, 16], 1, None, (1, 16)),  # one run: no idle actors, it gets a node's cores (not the cluster's 32)
    ([16, 16], 3, None, (3, 8)),  # 2 actors on one node: each gets half of it, so all 3 are scheduled at once
    ([8, 16], 2, None, (2, 8)),  # the smallest node bounds an actor's share
    ([16, 16], 100, 4, (4, 8)),  # --workers caps the actors
])
def test_the_ray_engine_has_no_more_actors_than_runs_and_each_fits_a_node(monkeypatch, nodes, runs, workers, want):
    """Sizing from Ray's view of the cluster (a stand-in for Ray's API: no cluster needed): actors and the threads
    (CPUs asked of Ray) of each."""
    import types

    from astroclass import extras
    from astroclass.experiments import engines

    asked = {}
    fake = types.SimpleNamespace(
        is_initialized=lambda: True, cluster_resources=lambda: {"CPU": float(sum(nodes))},
        nodes=lambda: [{"Alive": True, "Resources": {"CPU": float(c)}} for c in nodes] + [{"Alive": False}],
        remote=lambda **kw: asked.update(kw) or (lambda cls: cls))
    monkeypatch.setattr(extras, "require", lambda module, purpose: fake)
    engine = engines.make_engine("ray", workers=workers, runs=runs)
    assert (len(engine.slots), engine.threads) == want and asked["num_cpus"] == want[1]
    assert -(-len(engine.slots) // len(nodes)) * engine.threads <= min(nodes)  # every node fits its share of actors


def test_each_engine_tells_a_job_how_many_workers_share_its_device(monkeypatch):
    """Local: the slots on the job's GPU (``--per-gpu``); Ray: ``per_gpu`` actors per GPU (each asks for that
    fraction of one). A worker splits the device's memory between them (stand-ins for the workers and for Ray)."""
    import types

    from astroclass import extras
    from astroclass.experiments import engines
    from astroclass.experiments.workers import GroupJob

    class Idle:  # a worker process that takes jobs and does nothing with them
        def __init__(self, ctx, max_groups):
            self.conn = types.SimpleNamespace(send=lambda job: None)

        def alive(self):
            return True

    monkeypatch.setattr(engines, "_Worker", Idle)
    monkeypatch.setattr(engines, "_gpu_count", lambda: 2)
    local = engines.make_engine("local", per_gpu=3)
    job = GroupJob("g", [], "cuda:1")
    local.submit(job)
    assert local.slots.count("cuda:1") == 3 and (job.device_share, job.share) == (3, 6)

    fake = types.SimpleNamespace(
        is_initialized=lambda: True, cluster_resources=lambda: {"CPU": 32.0, "GPU": 2.0},
        nodes=lambda: [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 1.0}} for _ in range(2)],
        remote=lambda **kw: (lambda cls: cls), put=lambda data: data)
    monkeypatch.setattr(extras, "require", lambda module, purpose: fake)
    ray_engine = engines.make_engine("ray", per_gpu=3)
    ray_engine._actor_cls = types.SimpleNamespace(remote=lambda: types.SimpleNamespace(
        run_group=types.SimpleNamespace(remote=lambda job, shipments: object())))
    job = GroupJob("g", [], "cuda")
    ray_engine.submit(job)
    assert len(ray_engine.slots) == 6 and job.device_share == 3
