"""Which runs of a method and of its CE baseline are pairs: the same seed, the same start, the same data order.

At one seed the engine builds the student before anything method-specific, from the run's seed, and the training
loader draws its order from its own generator seeded by the run's seed (on the training device): a CE run and a TFD
run of one seed start from identical weights and see the same batches. The pairs are fixed by these facts alone,
before any outcome is read:

* runs with a fingerprint (:mod:`tfdistill.fingerprint`): paired when the data, the initial-weights and the
  first-epoch order hashes agree (:func:`tfdistill.fingerprint.pair_problem`);
* runs made before fingerprints existed: paired only when their records prove it -- the same seed, the same model
  settings (:data:`START_FREE` aside) and data settings (:data:`ORDER_FREE` aside), and one commit (without local
  changes), device kind, torch version and world size in their ``summary.json``.

Randomness inside one arm (DropBlock's masks, CRD's negatives, dropout) lowers the correlation of a pair but does not
break it: it is named as information, not a reason to unpair. One pair that does not hold unpairs the comparison
(the report then shows Welch's interval only, with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..fingerprint import pair_problem, read
from ..rundir import NON_EXPERIMENT_KEYS
from .stats import Diff, paired_difference

START_FREE = frozenset({"model.dropblock_prob", "model.dropblock_size", "model.dropblock_stages", "model.taps"})
"""Model settings that do not change the student's initial weights (DropBlock is attached after the student is
built and holds no weights; taps only read features)."""
ORDER_FREE = frozenset({"data.num_workers", "data.download", "data.eval_batch_size"})
"""Data settings that do not change the training loader's order."""
ORDER_KEYS = ("engine.max_steps_per_epoch",)
"""Settings outside ``data.*`` that change what the training loader yields in an epoch."""


@dataclass
class Pairing:
    """The pairs of a group's finished runs with its baseline's (matched by seed), or why there are none."""

    pairs: list[tuple[Any, Any]] = field(default_factory=list)
    """(run, baseline run) with the same seed, in seed order."""
    problem: Optional[str] = None
    """Why the runs are not paired (None: they are)."""
    by_fingerprint: int = 0
    """How many pairs their fingerprints prove (the rest: their configs and summaries)."""
    differ: list[str] = field(default_factory=list)
    """Settings outside the method in which the two arms differ (extra randomness in one arm, information only)."""
    proof: str = ""
    """For pairs proved by records: the commit, device and torch they share."""

    @property
    def paired(self) -> bool:
        return self.problem is None and bool(self.pairs)

    def difference(self, which: str) -> Optional[Diff]:
        """The paired difference of the ``which`` (last | best) values, or None when not paired."""
        if not self.paired:
            return None
        return paired_difference([a.value(which) for a, _ in self.pairs], [b.value(which) for _, b in self.pairs])

    def line(self, baseline: str) -> str:
        """One line for the report."""
        if not self.paired:
            return f"not paired with {baseline}: {self.problem}; Welch's interval only"
        seeds = ", ".join(str(a.seed) for a, _ in self.pairs)
        n = len(self.pairs)
        if self.by_fingerprint == n:
            how = "the same initial weights, data and first-epoch order (fingerprint.json)"
        elif self.by_fingerprint == 0:
            how = (f"runs made before fingerprints; the same seed, model and data settings, {self.proof} give the "
                   "same start and order")
        else:
            how = (f"{self.by_fingerprint} by fingerprint.json, {n - self.by_fingerprint} by their settings and "
                   f"{self.proof}")
        extra = (f"; the arms also differ in {', '.join(self.differ)} (randomness inside one arm lowers the "
                 "correlation, not the pairing)" if self.differ else "")
        return f"paired with {baseline} on seeds {seeds} (n={n}): {how}{extra}"


def _device_kind(device: Any) -> Optional[str]:
    """``cpu`` or ``cuda`` from summary.json's ``device`` text (``x86_64 CPU (2 cores, ...)`` or a GPU's name)."""
    if not device:
        return None
    return "cpu" if " CPU (" in str(device) or str(device).endswith("CPU") else "cuda"


def _settings(flat: dict) -> dict:
    return {k: v for k, v in flat.items()
            if (k.startswith("model.") and k not in START_FREE) or (k.startswith("data.") and k not in ORDER_FREE)
            or k in ORDER_KEYS}


def _env(rec: Any) -> dict:
    s = rec.summary or {}
    return {"commit": s.get("git_commit"), "device": _device_kind(s.get("device")), "torch": s.get("torch"),
            "world size": s.get("world_size", 1)}


def records_problem(a: Any, b: Any) -> Optional[str]:
    """Why the records of runs ``a`` and ``b`` (without fingerprints; same seed) do not prove the same start and
    order, or None when they do."""
    sa, sb = _settings(a.flat), _settings(b.flat)
    keys = sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))
    if keys:
        return f"made before fingerprints, and their settings differ in {', '.join(keys[:4])}"
    ea, eb = _env(a), _env(b)
    for r, e in ((a, ea), (b, eb)):
        if e["commit"] is not None and (str(e["commit"]) == "unknown" or str(e["commit"]).endswith("+dirty")):
            return f"made before fingerprints, {r.name} from code with local changes or unknown ({e['commit']})"
    for k in ea:
        if ea[k] is None or eb[k] is None:
            return f"made before fingerprints, and {a.name if ea[k] is None else b.name} does not record its {k}"
        if ea[k] != eb[k]:
            return f"made before fingerprints, with another {k} ({ea[k]} vs {eb[k]})"
    return None


def pair_runs(runs: list[Any], baseline: list[Any]) -> Pairing:
    """Pair the finished ``runs`` of a group with the finished runs of its ``baseline`` by seed (see module docs)."""
    if len({str(r.seed) for r in runs}) != len(runs) or len({str(r.seed) for r in baseline}) != len(baseline):
        return Pairing(problem="a seed is repeated in one arm")
    base = {str(r.seed): r for r in baseline}
    pairs = [(r, base[str(r.seed)]) for r in sorted(runs, key=lambda r: str(r.seed)) if str(r.seed) in base]
    if not pairs:
        return Pairing(problem="no seed in common")
    out = Pairing(pairs=pairs)
    bad: list[str] = []
    for a, b in pairs:
        fa, fb = read(a.path), read(b.path)
        proved = all(f is not None and (f.get("order") or {}).get("hash") and (f.get("init") or {}).get("hash")
                     for f in (fa, fb))
        why = pair_problem(fa, fb) if proved else records_problem(a, b)
        if why:
            bad.append(f"{a.name} / {b.name}: {why}")
        elif proved:
            out.by_fingerprint += 1
    if bad:
        more = f" (and {len(bad) - 1} more pair{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        return Pairing(pairs=pairs, problem=bad[0] + more)
    a, b = pairs[0]
    env = _env(a)
    out.proof = (f"commit {str(env['commit'])[:10]}, device {env['device']}, torch {env['torch']}"
                 if out.by_fingerprint < len(pairs) else "")
    fa, fb = a.flat, b.flat
    out.differ = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k) and not k.startswith("method.")
                        and k not in NON_EXPERIMENT_KEYS)
    return out
