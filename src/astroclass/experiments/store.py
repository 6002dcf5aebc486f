"""The results store: one SQLite file per experiment (WAL mode), the single source of truth of a grid.

Exactly-once execution rests on three rules:

1. Runs are *claimed* in one ``BEGIN IMMEDIATE`` transaction that picks claimable runs (one, or
   a group of runs that can train fused) and marks them ``running`` with the claimer's token,
   host, pid and one lease deadline; two runners can never claim the same run.
2. The claimer renews the lease (heartbeat) while the runs train. A run is claimable when it is
   ``pending``; or ``running`` with an expired lease, or whose claimer process is gone (same
   host, pid no longer alive); or ``failed`` with attempts left.
3. A result is recorded in one transaction per run (status, metrics, history, and the move of the
   attempt's files into the run's folder) only if the run is still claimed by the same token; a
   runner that lost its lease records nothing.

``attempts`` counts attempts that ended with a result (done or failed): a claim interrupted by a
kill, a lost lease or ctrl-C does not use one up. So killing a runner at any moment loses at most
the runs it was training (they are claimed again) and never records a run twice.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from astroclass.errors import AstroclassError
from astroclass.fileio import pid_alive

SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed")
HISTORY_COLUMNS = ("phase", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY, path TEXT NOT NULL, content_hash TEXT NOT NULL, class_names TEXT NOT NULL,
    n_images INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, dataset TEXT NOT NULL, model TEXT NOT NULL, setup TEXT NOT NULL,
    l2 REAL NOT NULL, maxnorm REAL NOT NULL, optimizer TEXT NOT NULL, seed INTEGER NOT NULL,
    config TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    token TEXT, host TEXT, pid INTEGER, device TEXT, lease_until REAL, started REAL, ended REAL,
    seconds REAL, metrics TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT NOT NULL REFERENCES runs(id), phase TEXT NOT NULL, epoch INTEGER NOT NULL,
    train_loss REAL, train_accuracy REAL, val_loss REAL, val_accuracy REAL, lr REAL, seconds REAL,
    PRIMARY KEY (run_id, phase, epoch));
"""


def status_counts(runs: Iterable, ids: Sequence[str] | None = None) -> dict[str, int]:
    """Runs per status (every status present, 0 when none), counting only ``ids`` if given."""
    wanted = set(ids) if ids is not None else None
    c = {s: 0 for s in STATUSES}
    for r in runs:
        if wanted is None or r["id"] in wanted:
            c[r["status"]] += 1
    return c


def run_label(config: dict[str, Any], dataset: str | None = None) -> str:
    """A run in one line: dataset model setup optimiser l2= mn= seed=."""
    c = config
    return (f"{dataset or c['dataset']} {c['model']} {c['setup']} {c['optimizer']} l2={c['l2']:g} "
            f"mn={c['maxnorm']:g} seed={c['seed']}")


def first_line(error: str | None) -> str:
    return error.splitlines()[0] if error else ""


MOUNTS = "/proc/mounts"
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
                       "9p", "afs", "panfs", "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs", "fuse.gcsfuse"}
"""File systems on which SQLite's locking (WAL's shared memory included) cannot be trusted across hosts."""


def filesystem_type(path: str | Path) -> str | None:
    """The type of the file system holding ``path`` (the longest mount point above it in /proc/mounts), or
    None where that cannot be read (not Linux)."""
    try:
        lines = Path(MOUNTS).read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])  # a space is \040 there
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


def _when_unlocked(step: Callable[[], Any], seconds: float = 60.0) -> Any:
    """``step()``, retried while SQLite says the database is locked (for statements that do not wait on the
    busy handler themselves), up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Store:
    """A results store at ``path`` (created when missing)."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        existed = self.path.exists()
        if not existed and not create:
            raise AstroclassError(f"{self.path}: no results store here")
        kind = filesystem_type(self.path)
        if kind in NETWORK_FILESYSTEMS and os.environ.get("ASTROCLASS_ALLOW_NETWORK_STORE") != "1":
            raise AstroclassError(
                f"{self.path}: the results store is on a {kind} file system, where SQLite's locks cannot be "
                f"trusted: two grid runners on different hosts could both take a run or damage the store. Keep "
                f"the experiment folder (-e) on a local disk of the one machine that runs `grid run`, and spread "
                f"the training over hosts with --engine ray (only the driver writes the store). If a single "
                f"process on one host uses it, set ASTROCLASS_ALLOW_NETWORK_STORE=1")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA busy_timeout=60000")
            # the journal-mode switch (and the check) can report "locked" at once while another runner opens
            # the same new store: they are retried instead of failing
            _when_unlocked(lambda: self.db.execute("PRAGMA journal_mode=WAL"))
            if existed:
                self._quick_check()
            self.db.execute("PRAGMA foreign_keys=ON")
            with self.transaction():
                version = self._schema_version()
                if version is None:
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            self.db.execute(stmt)
                    self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                    self.db.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))
                elif version > SCHEMA_VERSION:
                    raise AstroclassError(f"{self.path}: results store schema version {version} is newer than this "
                                          f"astroclass understands ({SCHEMA_VERSION}); upgrade astroclass")
        except sqlite3.DatabaseError as exc:
            raise AstroclassError(f"{self.path}: not a usable results store ({exc})") from None
        except OSError as exc:
            raise AstroclassError(f"{self.path}: cannot create the results store ({exc})") from None

    def _quick_check(self) -> None:
        """SQLite's quick_check: a store whose header is intact but whose pages are damaged (a disk error,
        a copy cut short) is named as such, with the way to recover what can be, before anything reads it."""
        try:
            problems = _when_unlocked(lambda: [r[0] for r in self.db.execute("PRAGMA quick_check(5)")])
        except sqlite3.DatabaseError as exc:
            self.db.close()
            if "not a database" in str(exc):
                raise AstroclassError(f"{self.path}: not a results store ({exc})") from None
            problems = [str(exc)]
        if problems != ["ok"]:
            self.db.close()
            raise self._damaged("; ".join(problems), "Nothing was read or changed")

    def _damaged(self, problem: str, done: str) -> AstroclassError:
        return AstroclassError(
            f"{self.path}: the results store is damaged ({problem[:300]}). {done}. Recover what is left into a new "
            f"store with `sqlite3 {self.path} .recover | sqlite3 recovered.sqlite`, then move it into place, or "
            f"restore a backup; `grid run` then re-trains the runs that were lost")

    def _schema_version(self) -> int | None:
        has = self.db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has:
            return None
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else None

    @property
    def schema_version(self) -> int:
        return self._schema_version() or SCHEMA_VERSION

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); SQLite errors become clear messages."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise AstroclassError(f"{self.path}: cannot write the results store ({exc})") from None
        try:
            yield self.db
            self.db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            try:
                self._rollback()
            except sqlite3.DatabaseError:
                pass
            if "malformed" in str(exc):  # damage that appeared after the store was opened and checked
                raise self._damaged(str(exc), "Nothing of this step was recorded") from None
            raise AstroclassError(f"{self.path}: could not write to the results store ({exc}); nothing of this "
                                  f"step was recorded, everything recorded before is intact") from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self.db.in_transaction:  # SQLite itself rolls back on some errors (e.g. disk full)
            self.db.execute("ROLLBACK")

    def close(self) -> None:
        self.db.close()

    # -- datasets --------------------------------------------------------------------------
    def check_datasets(self, datasets: dict[str, Path]) -> dict[str, dict]:
        """Open each dataset, compare its content hash with the one recorded; record new ones.

        Refuses to mix: a dataset whose content changed since runs were recorded is an error
        naming it, with both hashes.
        """
        from astroclass.data.prepared import PreparedDataset

        info: dict[str, dict[str, Any]] = {}
        for name, path in datasets.items():
            if not Path(path).is_file():
                raise AstroclassError(f"dataset {name}: {path} not found")
            with PreparedDataset(path) as ds:
                info[name] = {"path": str(path), "content_hash": ds.content_hash, "class_names": ds.class_names,
                              "n_images": len(ds)}
        with self.transaction() as db:
            for name, d in info.items():
                row = db.execute("SELECT content_hash, path FROM datasets WHERE name=?", (name,)).fetchone()
                if row and row["content_hash"] != d["content_hash"]:
                    n = db.execute("SELECT COUNT(*) FROM runs WHERE dataset=? AND status IN ('done','running')",
                                   (name,)).fetchone()[0]
                    if n:
                        raise AstroclassError(
                            f"dataset {name}: {d['path']} has content hash {d['content_hash'][:12]}, but {n} run(s) "
                            f"in {self.path} were made with {row['content_hash'][:12]} ({row['path']}); refusing to "
                            f"mix results of different data. Use a new experiment folder, or restore the original file")
                db.execute("INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?, ?)",
                           (name, d["path"], d["content_hash"], json.dumps(d["class_names"]), d["n_images"]))
        return info

    def datasets(self) -> dict[str, dict]:
        return {r["name"]: {"path": r["path"], "content_hash": r["content_hash"],
                            "class_names": json.loads(r["class_names"]), "n_images": r["n_images"]}
                for r in self.db.execute("SELECT * FROM datasets ORDER BY name")}

    # -- runs ------------------------------------------------------------------------------
    def add_runs(self, runs: Iterable) -> int:
        """Insert runs that are not in the store yet; returns how many were new.

        A run id hashes only the options that differ from their defaults, so a run whose id is already
        stored must also have the stored run's full config: if a default changed between the astroclass
        that recorded it and this one, the ids match but the runs do not, and nothing is added."""
        from astroclass.experiments.spec import NOT_IN_ID

        n, clashes = 0, []
        with self.transaction() as db:
            for r in runs:
                c = r.config
                cur = db.execute(
                    "INSERT OR IGNORE INTO runs (id, dataset, model, setup, l2, maxnorm, optimizer, seed, config) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r.id, c["dataset"], c["model"], c["setup"], c["l2"], c["maxnorm"], c["optimizer"], c["seed"],
                     json.dumps(c, sort_keys=True)))
                n += cur.rowcount
                if not cur.rowcount:
                    old = json.loads(db.execute("SELECT config FROM runs WHERE id=?", (r.id,)).fetchone()[0])
                    diff = [f"{k}: stored {old[k]!r}, now {c[k]!r}" for k in sorted(set(old) & set(c) - NOT_IN_ID)
                            if json.dumps(old[k]) != json.dumps(c[k])]
                    if diff:
                        clashes.append(f"{r.id} ({'; '.join(diff)})")
            if clashes:
                raise AstroclassError(
                    f"{self.path}: {len(clashes)} run(s) of the spec have the id of a stored run but not its options, "
                    f"e.g. {clashes[0]}. A default changed since those runs were recorded (run ids leave defaults "
                    f"out), so their results are not results of this spec. Use a new experiment folder (-e), or the "
                    f"astroclass version that recorded them; nothing was changed")
        return n

    def claim(self, ids: Sequence[str], max_attempts: int, lease_s: float, token: str | None = None,
              device: str = "") -> tuple[str, dict, str] | None:
        """Atomically claim one claimable run among ``ids``: (run id, config, token), or None."""
        token = token or uuid.uuid4().hex
        got = self.claim_group(ids, max_attempts, lease_s, token, device, limit=1)
        return (got[0][0], got[0][1], token) if got else None

    def claim_group(self, ids: Sequence[str], max_attempts: int, lease_s: float, token: str, device: str = "",
                    limit: int = 1, group_key: Callable[[dict], str] | None = None) -> list[tuple[str, dict]]:
        """Atomically claim up to ``limit`` claimable runs among ``ids`` under one token and one lease: the
        first claimable run in insertion order, and further ones with the same ``group_key`` of their
        config (runs that can train fused). Returns [(run id, config)], empty when nothing is claimable."""
        host, now = socket.gethostname(), time.time()
        wanted = set(ids)
        picked: list[tuple[str, dict]] = []
        key = None
        with self.transaction() as db:
            rows = db.execute(
                "SELECT id, status, attempts, host, pid, lease_until, config FROM runs WHERE status != 'done' "
                "ORDER BY rowid").fetchall()
            for r in rows:
                if len(picked) >= limit:
                    break
                if r["id"] not in wanted:
                    continue
                if r["status"] == "running":
                    dead = r["host"] == host and r["pid"] is not None and not pid_alive(r["pid"])
                    if not (dead or (r["lease_until"] or 0) < now):
                        continue
                elif r["status"] == "failed" and r["attempts"] >= max_attempts:
                    continue
                cfg = json.loads(r["config"])
                k = group_key(cfg) if group_key else None
                if picked and k != key:
                    continue
                key = k
                picked.append((r["id"], cfg))
            for rid, _ in picked:
                db.execute("UPDATE runs SET status='running', token=?, host=?, pid=?, device=?, lease_until=?, "
                           "started=?, ended=NULL, error=NULL WHERE id=?",
                           (token, host, os.getpid(), device, now + lease_s, now, rid))
        return picked

    def heartbeat(self, claims: dict[str, str], lease_s: float) -> list[str]:
        """Extend the leases of runs we hold ({run id: token}); returns the ids we no longer hold."""
        lost = []
        with self.transaction() as db:
            for rid, token in claims.items():
                cur = db.execute("UPDATE runs SET lease_until=? WHERE id=? AND token=? AND status='running'",
                                 (time.time() + lease_s, rid, token))
                if cur.rowcount == 0:
                    lost.append(rid)
        return lost

    def finish(self, rid: str, token: str, result: dict[str, Any], history: Sequence[dict],
               accept: Callable[[], None] | None = None) -> bool:
        """Record a finished run, with its history, if we still hold it; False otherwise. ``accept`` runs
        inside the transaction, after the claim was checked (the runner moves the attempt's files into
        place there): if it raises, nothing is recorded."""
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT started FROM runs WHERE id=? AND token=? AND status='running'",
                             (rid, token)).fetchone()
            if row is None:
                return False
            status = result.get("status", "failed")
            db.execute("DELETE FROM history WHERE run_id=?", (rid,))
            db.executemany(
                f"INSERT INTO history (run_id, {', '.join(HISTORY_COLUMNS)}) VALUES (?{', ?' * len(HISTORY_COLUMNS)})",
                [(rid, *[h.get(c) for c in HISTORY_COLUMNS]) for h in history])
            metrics = {k: v for k, v in result.items() if k not in ("config", "status", "error")}
            db.execute("UPDATE runs SET status=?, attempts=attempts+1, ended=?, seconds=?, metrics=?, error=?, "
                       "lease_until=NULL, device=COALESCE(?, device) WHERE id=?",
                       (status, now, now - (row["started"] or now), json.dumps(metrics), result.get("error") or None,
                        (result.get("environment") or {}).get("device"), rid))
            if accept is not None:
                accept()
        return True

    def fail(self, rid: str, token: str, error: str) -> bool:
        with self.transaction() as db:
            cur = db.execute("UPDATE runs SET status='failed', attempts=attempts+1, ended=?, error=?, lease_until=NULL "
                             "WHERE id=? AND token=? AND status='running'", (time.time(), error, rid, token))
            return cur.rowcount == 1

    def release(self, claims: dict[str, str]) -> None:
        """Give back runs we hold without a result (e.g. on ctrl-C): pending again, no attempt used."""
        with self.transaction() as db:
            for rid, token in claims.items():
                db.execute("UPDATE runs SET status='pending', token=NULL, lease_until=NULL "
                           "WHERE id=? AND token=? AND status='running'", (rid, token))

    # -- queries (the report's API) -------------------------------------------------------
    def runs(self, status: str | None = None, ids: Sequence[str] | None = None,
             cell: tuple[str, str, str] | None = None) -> list[dict[str, Any]]:
        """Runs as dicts (config and metrics decoded), in insertion order; optionally only those with
        ``status``, among ``ids``, or of one (dataset, model, setup) ``cell``."""
        where, args = [], []
        if status is not None:
            where.append("status=?")
            args.append(status)
        if cell is not None:
            where.append("dataset=? AND model=? AND setup=?")
            args.extend(cell)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        out: list[dict[str, Any]] = []
        wanted = set(ids) if ids is not None else None
        try:
            for r in self.db.execute(sql + " ORDER BY rowid", args):
                if wanted is not None and r["id"] not in wanted:
                    continue
                d = dict(r)
                for key, empty in (("config", None), ("metrics", {})):
                    try:
                        d[key] = json.loads(d[key]) if d[key] or empty is None else empty
                    except (json.JSONDecodeError, TypeError) as exc:
                        raise self._damaged(f"run {d['id']}: its {key} is not readable JSON: {exc}",
                                            "Nothing was changed") from None
                out.append(d)
        except sqlite3.OperationalError as exc:  # bytes changed inside a row's text: not UTF-8 any more
            raise self._damaged(f"a row after run {out[-1]['id'] if out else '(the first)'}: {exc}",
                                "Nothing was changed") from None
        return out

    def history(self, rid: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute(
            "SELECT * FROM history WHERE run_id=? ORDER BY CASE phase WHEN 'head' THEN 0 ELSE 1 END, epoch", (rid,))]

    def counts(self, ids: Sequence[str] | None = None) -> dict[str, int]:
        return status_counts(self.db.execute("SELECT id, status FROM runs"), ids)

    def mean_run_seconds(self) -> float | None:
        row = self.db.execute("SELECT AVG(seconds) FROM runs WHERE status='done' AND seconds IS NOT NULL").fetchone()
        return row[0]
