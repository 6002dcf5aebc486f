"""Shared test fixtures: the real data sets in ../shared/data, temp homes for tools, a CLI runner."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

# Tools that write to the home directory write to a temp folder instead.
_home = tempfile.mkdtemp(prefix="astroclass-test-home-")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_home, "mpl"))
os.environ.setdefault("TORCH_HOME", os.path.join(_home, "torch"))
os.environ.setdefault("HF_HOME", os.path.join(_home, "hf"))
os.environ.setdefault("XDG_CACHE_HOME", os.path.join(_home, "cache"))
os.environ.setdefault("RAY_TMPDIR", os.path.join(_home, "ray"))
os.environ.setdefault("JUPYTER_RUNTIME_DIR", os.path.join(_home, "jupyter-runtime"))  # kernels of the notebook tests
os.environ.setdefault("JUPYTER_CONFIG_DIR", os.path.join(_home, "jupyter-config"))
os.environ.setdefault("IPYTHONDIR", os.path.join(_home, "ipython"))


def data_set(name: str) -> Path:
    """A folder of ../shared/data; the tests run on real data, so its absence fails them, naming the path."""
    path = DATA / name
    if not path.exists():
        pytest.fail(f"real data {path} is not present: the tests need ../shared/data beside the repository")
    return path


@pytest.fixture
def cli(capsys):
    """Run the astroclass CLI in-process: returns (exit code, stdout, stderr)."""
    from astroclass.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def aries_h5(tmp_path_factory) -> Path:
    """The whole real ARIES star/galaxy set (3388 cutouts) as a prepared dataset."""
    from astroclass.data import import_catalog

    root = data_set("aries_star_galaxy")
    out = tmp_path_factory.mktemp("aries") / "aries.h5"
    import_catalog(root / "labels.csv", out, show_progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory) -> Path:
    """A small real slice of ARIES (40 stars, 40 galaxies, 32 px) for fast training tests."""
    from astroclass.data import ImageSpec, build_dataset
    from astroclass.data.importers import catalog_items

    root = data_set("aries_star_galaxy")
    items = catalog_items(root / "labels.csv")
    picked = [it for it in items if it.label == "star"][:40] + [it for it in items if it.label == "galaxy"][:40]
    out = tmp_path_factory.mktemp("tiny") / "tiny.h5"
    build_dataset(picked, out, ImageSpec(size=32), source={"kind": "test slice"}, show_progress=False)
    return out


class RayCluster:
    """Two Ray nodes started on this machine by :func:`two_node_ray`."""

    def __init__(self, address: str, env: dict, head: Path, node: Path):
        self.address, self.env, self.head, self.node = address, env, head, node

    def run(self, cwd: Path, *args: str):
        """Run a command in ``cwd`` with the cluster's token and its own astroclass cache (``cwd/cache``)."""
        import subprocess

        out = subprocess.run([str(a) for a in args], cwd=cwd, env={**self.env, "ASTROCLASS_CACHE": str(cwd / "cache")},
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return out


@contextlib.contextmanager
def two_node_ray(tmp_path: Path, driver: Path):
    """A Ray cluster of two nodes on this machine, each with its own temp dir and working folder
    (``tmp_path/head``, ``tmp_path/node``): the head has no CPU for actors, so they all run on the other node,
    which does not see ``driver`` at all (an empty file system is mounted over it in its mount namespace), as a
    node of a cluster without shared storage would not. Stopped on leaving."""
    import secrets
    import shutil
    import socket
    import subprocess
    import sys

    ray_bin = str(Path(sys.executable).with_name("ray"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head, node = tmp_path / "head", tmp_path / "node"
    for d in (head, node):
        d.mkdir(parents=True)
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a length limit
    token = temp / "token"  # the cluster's own token: nodes and driver authenticate with it
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(sys.path)}

    def hidden(folder: Path, user: bool) -> list[str]:
        """The start of a command line that runs the rest in a mount namespace where ``folder`` is empty (as root;
        with ``user``, in a user namespace of its own, for a machine where the tests do not run as root)."""
        return ["unshare", *(["--user", "--map-root-user"] if user else []), "--mount", "--propagation", "private",
                "sh", "-c", f'mount -t tmpfs tmpfs "{folder}" && exec "$0" "$@"']

    errors = []
    for user in (False, True):
        probe = subprocess.run([*hidden(driver, user), "test", "!", "-e", str(driver / "t.yaml")], capture_output=True)
        if probe.returncode == 0:
            break
        errors.append(probe.stderr.decode().strip()[:200])
    assert probe.returncode == 0, ("the test hides the driver's files from the other node with a mount namespace "
                                   f"(util-linux unshare, as root or with user namespaces enabled): {errors}")
    cluster = RayCluster(f"127.0.0.1:{port}", env, head, node)
    try:
        cluster.run(head, ray_bin, "start", "--disable-usage-stats", "--head", "--include-dashboard=false",
                    f"--port={port}", "--num-cpus=0", f"--temp-dir={temp / 'h'}")
        cluster.run(node, *hidden(driver, user), ray_bin, "start", "--disable-usage-stats",
                    f"--address=127.0.0.1:{port}", "--num-cpus=2", f"--temp-dir={temp / 'n'}")
        yield cluster
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120, env=env)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def small76_h5(tmp_path_factory) -> Path:
    """20 stars and 20 galaxies of ARIES at the paper's 76 px (for the backbones that need 75 px or more)."""
    from astroclass.data import ImageSpec, build_dataset
    from astroclass.data.importers import catalog_items

    items = catalog_items(data_set("aries_star_galaxy") / "labels.csv")
    picked = [it for it in items if it.label == "star"][:20] + [it for it in items if it.label == "galaxy"][:20]
    out = tmp_path_factory.mktemp("small76") / "small76.h5"
    build_dataset(picked, out, ImageSpec(size=76), source={"kind": "test slice"}, show_progress=False)
    return out
