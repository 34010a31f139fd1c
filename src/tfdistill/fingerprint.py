"""A run's fingerprint: ``fingerprint.json`` in its run directory, written and read here only.

One record per run directory (:data:`tfdistill.rundir.FINGERPRINT_FILE`), a JSON object of format
:data:`FORMAT` with four sections, each a JSON object other work may extend with keys of its own (readers ignore
keys they do not know; a change of meaning of an existing key bumps :data:`FORMAT`):

``data``
    The data's identity, from what moves with the data (:mod:`tfdistill.data.identity`): dataset name, class names,
    per split a folder's relative file names and sizes (a digest per class) or an archive's name and size, a
    generator's settings (``digits``, ``synthetic``), the subset chosen (``data.train_subset``/``test_subset`` and
    the digest of the indices). Never an absolute path or a modification time. ``hash``: the digest of all of it.
    Checked on ``--resume`` (:func:`data_difference`); ``--accept-data-change`` records the change in ``changes``.
    A dataset factory adds keys of its own through ``DatasetSource.identity`` (e.g. a generated proxy's seed):
    they enter the hash and the check.
``init``
    ``hash``: the digest of the student's initial weights (its state dict as built, before any step).
``order``
    ``hash``: the digest of the first main epoch's sample indices *as the loader yielded them* (``index`` of
    every batch, in order; rank 0's share under DDP), ``samples``: how many; written after the first epoch and kept
    by every resume. ``null`` until then, and for a run whose first epoch ran before fingerprints existed.
``env``
    ``commit``, ``device`` (the kind: ``cpu``, ``cuda``, ``mps``), ``device_name``, ``torch``, ``world_size``: where
    the run started.

The report pairs two runs (:func:`pair_problem`) when their seed, ``init.hash``, ``order.hash`` and ``data.hash``
agree: the same start, the same data, seen in the same order. Hashing reads the weights once and the first epoch's
indices once (on the device, fetched after the epoch): nothing in a step waits for it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from .data.identity import digest
from .rundir import FINGERPRINT_FILE, device_name, git_commit, write_text_atomic

FORMAT = 1
"""The version of fingerprint.json's layout."""
SECTIONS = ("data", "init", "order", "env")


# ----------------------------------------------------------------------------------------------- the parts
def weights_hash(module: torch.nn.Module) -> str:
    """The digest of ``module``'s state dict: every entry's name, dtype, shape and bytes, in name order (the same
    weights give the same digest whatever their device or memory format)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class OrderRecorder:
    """Collects the ``index`` tensor of every batch of one epoch, as the loader yields it (kept on the device: no
    host sync in the step), and digests them once the epoch is over."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []

    def wrap(self, batches: Iterator) -> Iterator:
        for batch in batches:
            self.parts.append(batch[2].detach())
            yield batch

    def result(self) -> dict:
        idx = torch.cat([p.reshape(-1).to(torch.int64) for p in self.parts]) if self.parts else torch.zeros(0)
        data = idx.to("cpu", torch.int64).numpy().tobytes()
        return {"hash": hashlib.sha256(data).hexdigest()[:16], "samples": int(idx.numel())}


def environment(device: torch.device, world_size: int = 1) -> dict:
    return {"commit": git_commit(), "device": device.type, "device_name": device_name(device),
            "torch": str(torch.__version__), "world_size": int(world_size)}


def data_section(identity: dict) -> dict:
    """The ``data`` section of an identity (:attr:`tfdistill.data.DataBundle.identity`), with its ``hash``."""
    body = {k: v for k, v in identity.items() if k not in ("hash", "changes")}
    return {**body, "hash": digest(body)}


def record(data: dict, init: str, env: dict, order: Optional[dict] = None) -> dict:
    """A new fingerprint record."""
    return {"format": FORMAT, "data": data_section(data), "init": {"hash": init}, "order": order, "env": env}


# ----------------------------------------------------------------------------------------------- the file
def read(run_dir: str | Path) -> Optional[dict]:
    """The fingerprint of the run in ``run_dir``, or None (made before fingerprints existed, or unreadable)."""
    path = Path(run_dir) / FINGERPRINT_FILE
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def write(run_dir: str | Path, rec: dict) -> None:
    write_text_atomic(Path(run_dir) / FINGERPRINT_FILE, json.dumps(rec, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------- comparing
def _size(n: Any) -> str:
    return f"{n:,} bytes" if isinstance(n, int) else "?"


def _first(names: list[str], k: int = 4) -> str:
    return ", ".join(names[:k]) + (f", ... {len(names) - k} more" if len(names) > k else "")


def data_difference(recorded: dict, now: dict) -> Optional[str]:
    """What differs between two ``data`` sections, in a few words (None when they are the same data)."""
    recorded, now = data_section(recorded), data_section(now)
    if recorded["hash"] == now["hash"]:
        return None
    if recorded.get("name") != now.get("name"):
        return f"dataset {recorded.get('name')!r} recorded, {now.get('name')!r} now"
    a, b = list(recorded.get("classes") or []), list(now.get("classes") or [])
    if a != b:
        only_a, only_b = [c for c in a if c not in b], [c for c in b if c not in a]
        if not only_a and not only_b:
            return "the same class names in another order"
        return f"class names differ (only recorded: {_first(only_a) or '-'}; only now: {_first(only_b) or '-'})"
    parts = []
    for split in ("train", "test"):
        ra, rb = recorded.get(split), now.get(split)
        if ra == rb:
            continue
        if not isinstance(ra, dict) or not isinstance(rb, dict) or ra.get("kind") != rb.get("kind"):
            parts.append(f"{split}: {_kind(ra)} recorded, {_kind(rb)} now")
        elif ra["kind"] == "folder":
            ca, cb = ra.get("classes") or {}, rb.get("classes") or {}
            other = [c for c in sorted(set(ca) | set(cb)) if ca.get(c) != cb.get(c)]
            parts.append(f"{ra.get('split', split)}/: other files (names or sizes) in {len(other)} of {len(cb)} "
                         f"classes ({_first(other)}); {ra.get('files')} files, {_size(ra.get('bytes'))} recorded, "
                         f"{rb.get('files')} files, {_size(rb.get('bytes'))} now")
        else:
            parts.append(f"{split}: {ra.get('split')} of {_size(ra.get('bytes'))} recorded, {rb.get('split')} of "
                         f"{_size(rb.get('bytes'))} now")
    for key in ("generator", "files", "subset"):
        if recorded.get(key) != now.get(key):
            parts.append(f"{key} {json.dumps(recorded.get(key), sort_keys=True)} recorded, "
                         f"{json.dumps(now.get(key), sort_keys=True)} now")
    return "; ".join(parts) or "the data's identity differs"


def _kind(section: Any) -> str:
    if not isinstance(section, dict):
        return "nothing"
    return f"a {section.get('kind')} ({section.get('split')})"


def pair_problem(a: Optional[dict], b: Optional[dict]) -> Optional[str]:
    """Why the runs of fingerprints ``a`` and ``b`` (of the same seed) are not a pair -- they started from other
    weights, saw other data or another order -- or None when they are. A missing fingerprint or order is a problem
    (the caller may prove the pairing otherwise, from the runs' configs)."""
    if a is None or b is None:
        return "no fingerprint"
    if (a.get("data") or {}).get("hash") != (b.get("data") or {}).get("hash"):
        why = data_difference(a.get("data") or {}, b.get("data") or {})
        return f"other data ({why})"
    ia, ib = (a.get("init") or {}).get("hash"), (b.get("init") or {}).get("hash")
    if ia != ib:
        return f"other initial weights (init {ia} vs {ib})"
    oa, ob = (a.get("order") or {}).get("hash"), (b.get("order") or {}).get("hash")
    if oa is None or ob is None:
        return "first-epoch order not recorded"
    if oa != ob:
        ea, eb = a.get("env") or {}, b.get("env") or {}
        where = (f"; devices {ea.get('device')} vs {eb.get('device')}" if ea.get("device") != eb.get("device") else
                 f"; torch {ea.get('torch')} vs {eb.get('torch')}" if ea.get("torch") != eb.get("torch") else "")
        return f"another data order (first epoch {oa} vs {ob}{where})"
    return None


# ----------------------------------------------------------------------------------------------- while a run trains
ACCEPT_FLAG = "--accept-data-change"


def check_data(run_dir: str | Path, identity: dict, accept: bool = False, stored: Optional[dict] = None
               ) -> Optional[str]:
    """Resuming the run in ``run_dir`` on the data of ``identity``: None when they are the data recorded in its
    fingerprint (or it has none); their difference when ``accept``; otherwise a DataError with the difference."""
    from .errors import DataError

    stored = stored if stored is not None else read(run_dir)
    if stored is None:
        return None
    why = data_difference(stored.get("data") or {}, identity)
    if why and not accept:
        raise DataError(f"cannot resume {run_dir}: its data differ from the data it was trained on: {why}; give "
                        f"data.root=<the data it was trained on>, or pass {ACCEPT_FLAG} to continue on these data "
                        f"(recorded in {FINGERPRINT_FILE})")
    return why


class Tracker:
    """A run's fingerprint while it trains: the engine's one object for it (:class:`tfdistill.engine.run.Run`).

    Built once the run's data and student are built (before any step and before a resumed run's state is
    restored): a new run's record is made; a resumed run's stored record is read and its data compared with the
    data now (other data is refused with the difference, unless ``accept_data_change``: then the change is
    recorded, with the epoch, in ``data.changes``). :meth:`save` writes it when the run directory opens;
    :meth:`wrap` records the first main epoch's order, :meth:`end_epoch` stores it."""

    def __init__(self, run_dir: Path, *, data: dict, student: torch.nn.Module, device: torch.device,
                 world_size: int = 1, resume: bool = False, accept_data_change: bool = False,
                 epoch: Optional[int] = None, main: bool = True, agree: Any = None) -> None:
        """``main``: this process reads (and writes) the run directory -- rank 0 under DDP; ``agree(verdict)``: rank
        0's verdict (None, or the refusal) on every rank, raised where it is an error (the engine's
        ``broadcast_or_raise``; a run directory need not be visible to every node)."""
        verdict: Any = None
        try:
            self._start(run_dir, data, student, device, world_size, resume and main, accept_data_change, epoch)
        except Exception as exc:  # the refusal: on every rank, not on rank 0 alone
            verdict = exc
        if agree is not None:
            agree(verdict)
        elif verdict is not None:
            raise verdict

    def _start(self, run_dir: Path, data: dict, student: torch.nn.Module, device: torch.device, world_size: int,
               resume: bool, accept_data_change: bool, epoch: Optional[int]) -> None:
        self.path = Path(run_dir)
        self.rec = record(data, weights_hash(student), environment(device, world_size))
        self.recorder: Optional[OrderRecorder] = None
        self.notes: list[str] = []
        self.dirty = not resume
        if not resume:
            return
        stored = read(self.path)
        if stored is None:  # a run started before fingerprints existed: its first-epoch order is unknown
            self.dirty = True
            self.rec["order"] = None
            self.rec["env"] = {**self.rec["env"], "note": "recorded on resume (the run started before fingerprints)"}
            return
        why = check_data(self.path, data, accept_data_change, stored)
        if why:
            change = {"after_epoch": epoch, "from": stored["data"].get("hash"), "to": self.rec["data"]["hash"],
                      "what": why}
            changes = [*(stored["data"].get("changes") or []), change]
            stored["data"] = {**self.rec["data"], "changes": changes}
            self.notes.append(f"note: {ACCEPT_FLAG}: resuming on other data ({why}); recorded in {FINGERPRINT_FILE}")
            self.dirty = True
        self.rec = stored

    def save(self) -> None:
        """Write the record if it is new or changed (rank 0 calls it)."""
        if self.dirty:
            write(self.path, self.rec)
            self.dirty = False

    def begin_epoch(self, epoch: int) -> None:
        """Main epoch ``epoch`` (0-based) starts: the first one's order is recorded unless known already."""
        self.recorder = OrderRecorder() if epoch == 0 and self.rec.get("order") is None else None

    def wrap(self, batches: Iterator) -> Iterator:
        """The training batches of this epoch, their indices recorded when this is the first main epoch."""
        return self.recorder.wrap(batches) if self.recorder is not None else batches

    def end_epoch(self, main: bool) -> None:
        """After a main epoch: the first one's order goes into the record (written by ``main``, rank 0)."""
        if self.recorder is not None:
            self.rec["order"] = self.recorder.result()
            self.recorder, self.dirty = None, True
            if main:
                self.save()
