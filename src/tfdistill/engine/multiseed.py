"""Several seeds of one recipe in one process, trained as one batched model (``seeds=[0, 1, 2, 3]``).

``tfdistill train RECIPE seeds=[0,1,2,3]`` (or :func:`train_seeds`) produces one ordinary run directory per seed,
exactly as if each seed had been trained alone: ``<name>_s<seed>`` when ``name`` is given, otherwise the
single-seed default name with that seed; each holds ``config.yaml`` (with its own ``seed`` and no ``seeds``),
``metrics.jsonl``, ``summary.json``, ``train.log``, ``last.pt`` / ``best.pt`` -- loadable by ``tfdistill eval``,
resumable alone as a single run, and resumable together by re-running the same command with ``--resume``.

How the batching works
----------------------
* One :class:`~tfdistill.engine.loop.Trainer` is built per seed (its own run directory, ``torch.manual_seed(seed)``
  before the model is created -- so the initial weights are those of the single run --, its own optimizer,
  schedule, checkpoint and resume logic), all sharing one device-resident dataset; each has its own training
  loader from ``DataBundle.train_loader_for(seed)`` (its own order and augmentation).
* Their parameters and persistent buffers (BatchNorm running statistics, ``num_batches_tracked``) are stacked
  along a new leading dimension K (``torch.func.stack_module_state``-style, keyed by name) and the first seed's
  :class:`~tfdistill.methods.Method` is run with ``torch.func.functional_call`` under ``torch.func.vmap``
  (``randomness="different"``): one call computes all K forward passes (convolutions become grouped
  convolutions), each with its own BatchNorm batch statistics and running-statistics update, and its own loss
  terms. The engine backpropagates the sum of the K losses, which gives every model exactly its own gradient.
* One SGD over the stacked parameters (same hyperparameters and param groups as each seed's optimizer) is K
  independent SGDs: every update is element-wise, so momentum buffers stay per model.
* The step runs through :class:`~.accel.Accelerator`, so ``engine.compile`` / ``engine.cuda_graphs`` apply to the
  batched step too.
* After every epoch the stacked state is copied back into each seed's Trainer (weights, buffers, momentum
  buffers, schedule position); evaluation runs all K students at once on the shared test batches (vmap with the
  batch not mapped); metrics, checkpoints and summaries are then written by each seed's own Trainer code.
* Resuming loads every seed's ``last.pt`` and re-stacks them; if the seeds stopped at different epochs (a kill
  between two checkpoint writes), each seed is resumed alone, one after another (with a notice).

Runs that differ in loss weights, and runs that diverge
-------------------------------------------------------
* Besides the seed, the runs of one group may differ in the loss weights a component declares in
  ``batch_weights`` (TFD: ``method.tfd.alpha`` / ``beta``; whether each is zero must agree, see :func:`batch_key`).
  The component keeps them as scalar buffers (``w_alpha``, ...) that are stacked per model like the BatchNorm
  statistics, so one batched model trains a whole alpha/beta grid: ``tfdistill sweep SPEC --batch-weights``.
* A run whose loss becomes NaN/inf stops as a single run would (its last good checkpoint stays, the reason goes to
  its ``train.log``; the sweep records it as failed/diverged); the group is rebuilt from the others' state at the
  end of the previous epoch and that epoch is redone for them -- it depends only on that state and on
  (seed, epoch), so they end exactly as they would have alone.

What runs batched, and what falls back
--------------------------------------
Batched: methods whose components all declare ``batchable = True`` -- ``ce``, ``ls``, ``tfd``, ``tfd_ls``, the
self-distillation methods with auxiliary modules ``one``, ``byot``, ``frskd``, and with a teacher ``kd``, ``fitnet``, ``at``, ``sp``, ``nst``, ``pkt``, ``rkd``, ``cc``, ``vid``, ``fsp`` and their
combinations (``tfd+kd``, ``kd+ls``, ...) -- with the device-resident loader, fp32 or bf16, no DropBlock, in a single
process; and the model must run under ``vmap`` (checked with one trial forward/backward pass that changes nothing).
The frozen teacher is not stacked: it is one network, run on the K models' batches in one vmapped call. Anything
else -- CRD (its memory-bank update has no batching rule), methods with pre-stages (FitNets' hint stage, AB, FT,
``fsp_crd``), the DataLoader path, fp16 (one GradScaler would skip the step of all K models when one overflows),
DDP -- trains the seeds one after another as ordinary single runs, after a one-line notice. With dropout the K
models draw independent masks, but not the masks the single runs would draw (the weights are then equal in
distribution, not value).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import build_data
from ..errors import ConfigError, DivergenceError
from ..methods import method_uses, resolve_preset
from .accel import Accelerator, plain_configs
from .loop import RunResult, Trainer, _hms, autocast_for, default_run_name, resolve_device
from .rundir import RunDir, device_name
from .schedule import StepLR

__all__ = ["train_seeds", "seed_configs", "run_name_for_seed", "batching_blocker",
           "MultiSeedTrainer", "batched_seeds_executor"]

# ----------------------------------------------------------------------------------------------- configs
def run_name_for_seed(cfg: Any, seed: int) -> str:
    """``<name>_s<seed>`` when ``cfg.name`` is set, else the single-seed default name for ``seed``."""
    return f"{cfg.name}_s{int(seed)}" if cfg.name else default_run_name(cfg, int(seed))


def seed_configs(cfg: Any) -> list[Any]:
    """One single-run config per seed of ``cfg.seeds``: ``seed`` set, ``seeds`` cleared, ``name`` per seed."""
    from omegaconf import OmegaConf

    seeds = [int(s) for s in cfg.seeds]
    if not seeds:
        raise ConfigError("seeds=[] is empty; give at least one seed, e.g. seeds=[0,1,2]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds} lists a seed twice")
    out = []
    for s in seeds:
        c = OmegaConf.merge(cfg, {"seed": s, "seeds": None, "name": run_name_for_seed(cfg, s)})
        out.append(c)
    return out


def batch_key(cfg: Any) -> str:
    """What must be equal for runs to be trained as one batched model: the whole config except ``seed``,
    ``seeds``, ``name`` and the loss weights that the method's components declare in ``batch_weights``
    (``method.tfd.alpha`` / ``beta``), of which only whether each is zero counts."""
    from omegaconf import OmegaConf

    from ..methods import DISTILLERS

    d = OmegaConf.to_container(cfg, resolve=True)
    for k in ("seed", "seeds", "name"):
        d.pop(k, None)
    section = d.get("method") or {}
    for comp in resolve_preset(str(cfg.method.name)).components:
        sub = section.get(comp)
        if isinstance(sub, dict):
            for w in DISTILLERS.get(comp).batch_weights:
                if w in sub:
                    sub[w] = bool(sub[w] and float(sub[w]) > 0)
    return json.dumps(d, sort_keys=True, default=str)


def model_buffer_names(method: nn.Module) -> list[str]:
    """Non-persistent buffers that belong to one model of a batched group (the components' loss weights)."""
    from ..methods.base import Distiller

    out = []
    for prefix, m in method.named_modules():
        if isinstance(m, Distiller):
            out += [f"{prefix}.{b}" if prefix else b for b in m.model_buffers()]
    return out


def batching_blocker(cfg: Any) -> str | None:
    """Why the seeds of ``cfg`` cannot be batched (judged from the config alone), or None."""
    name = str(cfg.method.name)
    comps = resolve_preset(name).components
    from ..methods import DISTILLERS

    bad = [c for c in comps if not DISTILLERS.get(c).batchable]
    if bad:
        ok = sorted(c for c in DISTILLERS.names() if DISTILLERS.get(c).batchable)
        return (f"method {name!r} has component(s) {bad} not verified for batching (batchable components: "
                f"{', '.join(ok)}; methods without components: ce, ls)")
    if cfg.engine.precision == "fp16":
        return "engine.precision=fp16 (one GradScaler cannot skip steps per model); use bf16 or fp32"
    if cfg.model.dropblock_prob:
        return "model.dropblock_prob > 0 (DropBlock is not batched)"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "the run is distributed (DDP)"
    if str(cfg.data.loader) == "dataloader":
        return "data.loader=dataloader (batching needs the device-resident loader)"
    return None


def train_seeds(cfg: Any, *, resume: bool = False, overwrite: bool = False,
                echo: Callable[[str], None] | None = None) -> list[RunResult]:
    """Train one run per seed of ``cfg.seeds``, batched into one model where possible (see module docs)."""
    cfgs = seed_configs(cfg)
    say = echo if echo is not None else (lambda s: tqdm.write(s, file=sys.stdout))
    if len(cfgs) == 1:
        return [Trainer(cfgs[0], resume=resume, overwrite=overwrite, echo=echo).fit()]
    why = batching_blocker(cfg)
    if why is not None:
        say(f"note: seeds {list(cfg.seeds)} run one after another, not batched: {why}")
        out: list[RunResult | DivergenceError] = []
        for c in cfgs:
            try:
                out.append(Trainer(c, resume=resume, overwrite=overwrite, echo=echo).fit())
            except DivergenceError as exc:  # the other seeds still run
                out.append(exc)
    else:
        out = MultiSeedTrainer(cfgs, resume=resume, overwrite=overwrite, echo=echo).fit()
    failed = [(c, r) for c, r in zip(cfgs, out) if isinstance(r, DivergenceError)]
    if failed:
        rest = "" if len(failed) == len(cfgs) else "; the other seeds ran to the end"
        raise DivergenceError(f"{len(failed)} of {len(cfgs)} seed runs stopped ({', '.join(str(c.name) for c, _ in failed)}"
                              f"): {failed[0][1]}{rest}")
    return [r for r in out if isinstance(r, RunResult)]


def _persistent_buffer_names(module: nn.Module) -> list[str]:
    keys = set(module.state_dict().keys())
    return [n for n, _ in module.named_buffers() if n in keys]


# ----------------------------------------------------------------------------------------------- trainer
class MultiSeedTrainer:
    """K seed Trainers sharing one batched (vmapped) model; see the module docs."""

    def __init__(self, cfgs: list[Any], *, resume: bool = False, overwrite: bool = False,
                 echo: Callable[[str], None] | None = None,
                 modes: list[tuple[bool, bool]] | None = None,
                 on_drop: Callable[[int, DivergenceError], None] | None = None) -> None:
        """``cfgs``: one single-run config per seed (same recipe); ``modes``: per config ``(resume, overwrite)``
        (default: ``resume`` / ``overwrite`` for all); ``on_drop(i, error)`` is called as soon as run ``i`` stops
        because its loss diverged (the others go on)."""
        first = cfgs[0]
        modes = modes or [(resume, overwrite)] * len(cfgs)
        self.cfg = first
        self.echo = echo if echo is not None else (lambda s: tqdm.write(s, file=sys.stdout))
        keys = {batch_key(c) for c in cfgs}
        if len(keys) != 1:
            raise ConfigError("runs batched into one model must differ only in seed, name and the loss weights "
                              "of the method's batch_weights (e.g. method.tfd.alpha/beta, zero or not alike)")
        self.seeds = [int(c.seed) for c in cfgs]
        # every run directory is checked before any is created or (--overwrite) replaced: a refused run costs none
        for c, (res, ovr) in zip(cfgs, modes):
            RunDir(Path(c.out_dir) / (c.name or default_run_name(c))).prepare(resume=res, overwrite=ovr, dry=True)
        self.device = resolve_device(first.engine.device)
        bundle = build_data(first.data, self.device, seed=self.seeds[0],
                            channels_last=bool(first.engine.channels_last),
                            paired=method_uses(first.method.name).paired_batches)
        self.trainers = []
        for c, (res, ovr) in zip(cfgs, modes):
            shared = self.trainers[0].teacher if self.trainers else None  # one frozen teacher for all runs
            self.trainers.append(Trainer(c, resume=res, overwrite=ovr, echo=echo, teacher=shared,
                                         data=dataclasses.replace(bundle, train=bundle.train_loader_for(int(c.seed)))))
        self.on_drop = on_drop
        self.bundle = bundle
        self.all_trainers = list(self.trainers)
        self.errors: dict[int, DivergenceError] = {}
        """Index into the original runs -> why that run stopped (it diverged); the others went on."""
        self.blocker: str | None = None
        if bundle.loader != "device":
            self.blocker = "the data uses the DataLoader path (batching needs the device-resident loader)"
        elif len({(t.epoch, t.pre_done) for t in self.trainers}) != 1:
            self.blocker = ("the runs' checkpoints are at different epochs "
                            f"({', '.join(f'{t.run.path.name}: {t.epoch}' for t in self.trainers)})")
        elif any(t.method.pre_stages() for t in self.trainers) and not self.trainers[0].pre_done:
            self.blocker = "the method has pre-stages"
        self.K = len(self.trainers)
        if self.blocker is None:
            self._build()

    @property
    def what(self) -> str:
        """The group in words: ``seeds [0, 1, 2]``, or the run names when they differ in more than the seed."""
        if len({json.dumps(self._weights(t), sort_keys=True) for t in self.trainers}) == 1:
            return f"seeds {self.seeds}"
        return f"{self.K} runs ({', '.join(t.run.path.name for t in self.trainers)})"

    @staticmethod
    def _weights(t: Trainer) -> dict[str, float]:
        return {n: float(b) for n, b in t.method.named_buffers() if n in model_buffer_names(t.method)}

    # ------------------------------------------------------------------ batched state
    def _build(self) -> None:
        t0 = self.trainers[0]
        self.template: nn.Module = t0.method
        self.pnames = [n for n, _ in t0.method.named_parameters()]
        self.bnames = _persistent_buffer_names(t0.method)
        self.bnames += [n for n in model_buffer_names(t0.method) if n not in self.bnames]
        per = [dict(t.method.named_parameters()) for t in self.trainers]
        perb = [dict(t.method.named_buffers()) for t in self.trainers]
        with torch.no_grad():
            self.P: dict[str, Tensor] = {
                n: nn.Parameter(torch.stack([p[n].detach() for p in per]), requires_grad=per[0][n].requires_grad)
                for n in self.pnames}
            self.B: dict[str, Tensor] = {n: torch.stack([b[n] for b in perb]).clone() for n in self.bnames}
        # one SGD over the stacked parameters, mirroring the param groups of the seeds' optimizers
        ids = {id(p): n for n, p in t0.method.named_parameters()}
        groups = []
        for g in t0.optimizer.param_groups:
            hyper = {k: v for k, v in g.items() if k != "params"}
            groups.append({**hyper, "params": [self.P[ids[id(p)]] for p in g["params"]]})
        o = self.cfg.optim
        self.optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                         weight_decay=o.weight_decay)
        for gs, g in zip(self.optimizer.param_groups, t0.optimizer.param_groups):
            gs["lr"] = g["lr"]
        self._stack_optimizer_state()
        self.sched = StepLR(self.optimizer, o.lr, epochs=int(self.cfg.epochs), steps_per_epoch=t0.steps_per_epoch,
                            schedule=self.cfg.schedule)
        self.sched.step_count = t0.sched.step_count
        self.precision = t0.precision
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)
        template, pnames, bnames = self.template, self.pnames, self.bnames

        def one(params: dict, buffers: dict, x: Tensor, y: Tensor, idx: Tensor):
            return torch.func.functional_call(template, {**params, **buffers}, (x, y, idx))

        self._vforward = torch.func.vmap(one, in_dims=(0, 0, 0, 0, 0), randomness="different")
        P, B = self.P, self.B

        def batched(x: Tensor, y: Tensor, idx: Tensor):
            return self._vforward({n: P[n] for n in pnames}, {n: B[n] for n in bnames}, x, y, idx)

        self.model = batched
        engine = self.cfg.engine
        if engine.compile:
            plain_configs(self.template)
        self.accel = Accelerator(batched, self.optimizer, self.scaler, device=self.device, precision=self.precision,
                                 compile=bool(engine.compile), cuda_graphs=bool(engine.cuda_graphs), log=self._log,
                                 watch=self.template)
        # student-only state for evaluation
        self.student = t0.student
        self.snames = [(n, n[len("student."):]) for n in [*pnames, *bnames] if n.startswith("student.")]

        def one_eval(state: dict, x: Tensor) -> Tensor:
            return torch.func.functional_call(self.student, state, (x,))

        self._veval = torch.func.vmap(one_eval, in_dims=(0, None), randomness="different")

    def _stack_optimizer_state(self) -> None:
        """Momentum buffers of the seeds' optimizers (after a resume) -> the stacked optimizer."""
        for gi, stacked_group in enumerate(self.optimizer.param_groups):
            for j, P in enumerate(stacked_group["params"]):
                mb = [t.optimizer.state.get(t.optimizer.param_groups[gi]["params"][j], {}).get("momentum_buffer")
                      for t in self.trainers]
                if all(b is not None for b in mb):
                    self.optimizer.state[P]["momentum_buffer"] = torch.stack(mb).clone()

    @torch.no_grad()
    def sync_down(self) -> None:
        """Copy the stacked weights, buffers, momentum buffers and schedule position into each seed's Trainer."""
        for k, t in enumerate(self.trainers):
            params = dict(t.method.named_parameters())
            bufs = dict(t.method.named_buffers())
            for n in self.pnames:
                params[n].copy_(self.P[n][k])
            for n in self.bnames:
                bufs[n].copy_(self.B[n][k])
            for gs, g in zip(self.optimizer.param_groups, t.optimizer.param_groups):
                for P, p in zip(gs["params"], g["params"]):
                    mb = self.optimizer.state.get(P, {}).get("momentum_buffer")
                    if mb is not None:
                        t.optimizer.state[p]["momentum_buffer"] = mb[k].clone()
                g["lr"] = gs["lr"]
            t.sched.step_count = self.sched.step_count

    # ------------------------------------------------------------------ checks
    def trial(self) -> str | None:
        """One forward/backward of the batched model on cloned buffers (nothing is changed); None if it works."""
        x, y, idx = [], [], []
        for t in self.trainers:
            for b in t.data.train:
                x.append(b[0][:2]), y.append(b[1][:2]), idx.append(b[2][:2])
                break
        try:
            params = {n: self.P[n] for n in self.pnames}
            bufs = {n: self.B[n].clone() for n in self.bnames}
            was = self.template.training
            self.template.train()
            with autocast_for(self.precision, self.device):
                logits, terms = self._vforward(params, bufs, torch.stack(x), torch.stack(y), torch.stack(idx))
            loss = torch.stack([v.float() for v in terms.values()]).sum()
            trainable = [p for p in params.values() if p.requires_grad]
            torch.autograd.grad(loss, trainable, allow_unused=True)
            self.template.train(was)
            if tuple(logits.shape[:2]) != (self.K, 2):
                return f"unexpected batched output shape {tuple(logits.shape)}"
        except Exception as exc:  # an op without a vmap rule, data-dependent control flow, ...
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            return f"the model does not run under torch.func.vmap ({type(exc).__name__}: {reason})"
        return None

    # ------------------------------------------------------------------ logging
    def _log(self, line: str) -> None:
        self.echo(line)

    # ------------------------------------------------------------------ training
    def train_epoch(self, epoch: int) -> list[dict[str, Any]]:
        K, dev = self.K, self.device
        for t in self.trainers:
            t.method.on_epoch_start(epoch)  # the template's (seed 0's) non-persistent buffers are the ones used
        self.template.train()
        self.accel.new_epoch()
        loaders = [t.data.train for t in self.trainers]
        for ld in loaders:
            ld.set_epoch(epoch)
        total = self.trainers[0].steps_per_epoch
        sums: dict[str, Tensor] = {}
        correct = torch.zeros(K, device=dev, dtype=torch.float64)
        bad = torch.zeros(K, device=dev, dtype=torch.bool)
        seen = 0
        t0 = time.time()
        show = bool(self.cfg.engine.progress) and sys.stdout.isatty()
        bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{self.cfg.epochs} ({K} seeds)", leave=False,
                   dynamic_ncols=True, disable=not show, file=sys.stdout)
        shown = t0
        for step, batches in enumerate(zip(*loaders)):
            if step >= total:
                break
            x = torch.stack([b[0] for b in batches])
            y = torch.stack([b[1] for b in batches])
            idx = torch.stack([b[2] for b in batches])
            self.sched.apply()
            _, logits, terms = self.accel.step(x, y, idx)
            self.sched.step()
            n = y.shape[1]
            with torch.no_grad():
                loss = torch.stack([v.detach().float() for v in terms.values()]).sum(0)  # (K,)
                bad |= ~torch.isfinite(loss)
                correct += (logits.argmax(-1) == y).sum(1)
                for key, v in (("loss", loss), *terms.items()):
                    v = v.detach().double() * n
                    sums[key] = v if key not in sums else sums[key] + v
            seen += n
            bar.update(1)
            now = time.time()
            if now - shown > 0.5 or step == total - 1:
                shown = now
                if bool(bad.any()):
                    self._diverged(epoch, bad, sums)
                bar.set_postfix(loss=f"{(sums['loss'].sum() / (K * seen)).item():.3f}")
        bar.close()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.time() - t0
        keys = list(sums)
        packed = torch.stack([sums[k] for k in keys] + [correct, bad.double()], 1).tolist()  # (K, len)
        count = max(seen, 1)
        out = []
        for k in range(K):
            vals = packed[k]
            if vals[-1] > 0 or not all(math.isfinite(v) for v in vals[:-1]):
                self._diverged(epoch, bad, sums)
            ips = seen / seconds if seconds > 0 else float("nan")
            out.append({
                "loss": vals[0] / count,
                "terms": {key: v / count for key, v in zip(keys[1:], vals[1:len(keys)])},
                "train_acc": 100.0 * vals[len(keys)] / count,
                "epoch_seconds": seconds,
                "images_per_sec": ips,
                "group_images_per_sec": K * ips,
                "batched_seeds": K,
            })
        return out

    def _diverged(self, epoch: int, bad: Tensor, sums: dict[str, Tensor]) -> None:
        which = [k for k in range(self.K) if bool(bad[k]) or not math.isfinite(float(sums["loss"][k]))]
        raise _Diverged(which or list(range(self.K)), epoch)

    def _drop(self, which: list[int], epoch: int) -> None:
        """Stop the runs ``which`` (their loss became NaN/inf in ``epoch``) as a single run would stop -- each keeps
        its last good checkpoint -- and rebuild the group of the others from their state at the end of the
        previous epoch (the epoch is then redone: it depends only on that state and on (seed, epoch))."""
        gone = [self.trainers[k] for k in which]
        for t in gone:
            keep = (f"the last good checkpoint is {t.run.last} (after epoch {t.epoch})" if t.run.last.exists()
                    else "no checkpoint was written yet")
            err = DivergenceError(f"loss became NaN/inf in epoch {epoch + 1} (batched with {self.what}); stopped, "
                                  f"{keep}")
            t._log(f"error: {err}")
            if t.tb is not None:
                t.tb.close()
            t.restore_replaced()  # as a single run: a run it replaced (--overwrite) comes back if it had no checkpoint
            i = self.all_trainers.index(t)
            self.errors[i] = err
            if self.on_drop is not None:
                self.on_drop(i, err)
        self.trainers = [t for t in self.trainers if t not in gone]
        self.seeds = [int(t.cfg.seed) for t in self.trainers]
        self.K = len(self.trainers)
        self.echo(f"note: {', '.join(t.run.path.name for t in gone)} diverged in epoch {epoch + 1} and stopped"
                  + (f"; epoch {epoch + 1} is redone for the other {self.K}" if self.K else ""))
        if self.K:
            self._build()

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        """Top-1/top-5/mean CE of all K students on the shared test split, one vmapped pass per batch."""
        K, dev = self.K, self.device
        student = self.student
        was = student.training
        student.eval()
        state = {short: (self.P[n] if n in self.P else self.B[n]) for n, short in self.snames}
        stats = torch.zeros(K, 4, dtype=torch.float64, device=dev)
        for x, y, _ in self.trainers[0].data.test:
            with autocast_for(self.precision, dev):
                logits = self._veval(state, x)
            logits = logits.float()
            k = min(5, logits.shape[-1])
            hit = logits.topk(k, dim=-1).indices.eq(y.view(1, -1, 1))
            ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(K), reduction="none").view(K, -1).sum(1)
            nb = torch.full((K,), float(y.numel()), device=dev, dtype=torch.float64)
            stats += torch.stack([hit[..., :1].sum((1, 2)).double(), hit.sum((1, 2)).double(), ce.double(), nb], 1)
        student.train(was)
        out = []
        for c1, c5, loss, n in stats.tolist():
            n = max(n, 1.0)
            out.append({"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n, "count": int(n)})
        return out

    def fit(self) -> list[RunResult | DivergenceError]:
        """Train the group; one entry per run, in order: its result, or the :class:`DivergenceError` that stopped it
        (a run whose loss becomes NaN/inf stops alone, keeping its last good checkpoint; the others go on)."""
        try:
            return self._fit()
        except BaseException:
            for t in self.trainers:
                t.restore_replaced()
            raise

    def _fit(self) -> list[RunResult | DivergenceError]:
        if self.blocker is None and all(t.resumed_from is not None and t.epoch >= t.cfg.epochs and
                                        t.run.finished() for t in self.trainers):
            return self._one_by_one()  # each says "already finished"
        if self.blocker is None:
            self.blocker = self.trial()
        if self.blocker is not None:
            self.echo(f"note: {self.what} run one after another, not batched: {self.blocker}")
            return self._one_by_one()
        cfg = self.cfg
        first = self.trainers[0].epoch
        for t in self.trainers:
            if t.resumed_from is None:
                t._log(f"run {t.run.path}: {cfg.model.name} / {cfg.method.name} on {cfg.data.name} "
                       f"({t.data.num_train} train images, {t.num_classes} classes), {cfg.epochs} epochs, "
                       f"device {device_name(self.device)}, batched with {self.what} ({self.accel.mode} step)")
            else:
                t._log(f"resuming {t.run.path} after epoch {t.resumed_from}/{cfg.epochs} (batched with {self.what})")
            t.pre_done = True
        t_run = time.time()
        last_eval: list[dict[str, float]] = []
        epoch = first
        while epoch < int(cfg.epochs) and self.trainers:
            lr = self.sched.lr()
            try:
                trains = self.train_epoch(epoch)
            except _Diverged as d:
                if last_eval:
                    last_eval = [ev for k, ev in enumerate(last_eval) if k not in d.which]
                self._drop(d.which, d.epoch)
                continue
            final = epoch + 1 == cfg.epochs
            if final or (epoch + 1) % max(1, cfg.engine.eval_every) == 0:
                last_eval = self.evaluate()
            self.sync_down()
            done = epoch + 1 - first
            eta = (time.time() - t_run) / done * (cfg.epochs - epoch - 1)
            by_seed = self.what.startswith("seeds")
            for k, t in enumerate(self.trainers):
                ev = last_eval[k] if last_eval else {}
                improved = bool(ev) and ev["top1"] > t.best_top1
                if improved:
                    t.best_top1, t.best_epoch = ev["top1"], epoch + 1
                t.epoch = epoch + 1
                train = trains[k]
                row = {"epoch": epoch + 1, "lr": lr, **train,
                       "test_top1": ev.get("top1"), "test_top5": ev.get("top5"), "test_loss": ev.get("loss"),
                       "best_top1": t.best_top1, "time": time.time() - t.started}
                t.run.append_metrics(row)
                t._tb_write(row)
                t.save(best=improved)
                who = f"seed {self.seeds[k]}" if by_seed else t.run.path.name
                t._log(f"epoch {epoch + 1:>3}/{cfg.epochs}  {who}  lr {lr:.4g}  loss {train['loss']:.4f}"
                       f"  train {train['train_acc']:.2f}%  test {ev.get('top1', float('nan')):.2f}% (best "
                       f"{t.best_top1:.2f}% @{t.best_epoch})  {train['epoch_seconds']:.1f}s  "
                       f"{train['group_images_per_sec']:.0f} img/s ({self.K} models)  ETA {_hms(eta)}")
            epoch += 1
        if self.trainers and not last_eval:
            last_eval = self.evaluate()
        results: dict[int, RunResult] = {}
        for k, t in enumerate(self.trainers):
            summary = t._summary(last_eval[k])
            summary["batched"] = {"seeds": self.seeds, "runs": [x.run.path.name for x in self.trainers],
                                  "step": self.accel.mode}
            t.run.write_summary(summary)
            t._log(f"finished: best top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch']}), last "
                   f"{summary['last_top1']:.2f}%  -> {t.run.path}")
            if t.tb is not None:
                t.tb.close()
            results[self.all_trainers.index(t)] = RunResult(t.run.path, json.loads(t.run.summary.read_text()))
        return [results[i] if i in results else self.errors[i] for i in range(len(self.all_trainers))]

    def _one_by_one(self) -> list[RunResult | DivergenceError]:
        out: list[RunResult | DivergenceError] = []
        for i, t in enumerate(self.trainers):
            try:
                out.append(t.fit())
            except DivergenceError as exc:
                t._log(f"error: {exc}")
                out.append(exc)
                if self.on_drop is not None:
                    self.on_drop(i, exc)
        return out


class _Diverged(Exception):
    """Inside :class:`MultiSeedTrainer`: the loss of the models ``which`` (indices) became NaN/inf in ``epoch``."""

    def __init__(self, which: list[int], epoch: int) -> None:
        super().__init__(f"models {which} diverged in epoch {epoch + 1}")
        self.which, self.epoch = which, epoch


# ----------------------------------------------------------------------------------------------- sweeps
def sweep_group_key(cfg: Any, group: str, weights: bool) -> str:
    """The sweep's grouping for batched executors: runs with the same key train as one batched model. ``group`` is
    the run's seed group (same model, method and variant); with ``weights``, batchable runs that differ only in the
    components' ``batch_weights`` share a key too."""
    if not weights or batching_blocker(cfg) is not None:
        return group
    return "batch:" + batch_key(cfg)


def batched_seeds_executor(echo: Callable[[str], None] = print, *, weights: bool = False, max_group: int = 0):
    """A ``tfdistill sweep`` executor (in this process) that trains each group of runs differing only by seed as one
    batched model (``tfdistill sweep SPEC --batch-seeds``); with ``weights`` (``--batch-weights``) runs that also
    differ in the loss weights a method declares batchable (TFD's alpha and beta: an alpha/beta grid) join one group.
    ``max_group`` > 0 splits groups into batched models of at most that many runs. Groups that cannot be batched, and
    single runs, are trained one after another exactly like the default in-process executor. A run whose loss
    becomes NaN/inf is recorded as failed (diverged) and the rest of its group goes on. (With ``--jobs N`` or
    ``--gpus`` the sweep's :class:`~tfdistill.sweep.runner.SubprocessExecutor` trains each group in a process.)"""
    import time as _time
    import traceback

    from ..sweep.runner import FAILED_MARKER, InProcessExecutor, Outcome, _read_summary, is_finished, start_mode

    class BatchedSeedsExecutor(InProcessExecutor):
        batches_seeds = True

        def group_key(self, run) -> str:
            return sweep_group_key(run.cfg, run.group, weights)

        def can_batch(self, run) -> bool:
            return batching_blocker(run.cfg) is None

        def run_group(self, runs, slot, hooks) -> None:  # type: ignore[override]
            runs = list(runs)
            if len(runs) < 2 or hooks.stopping():
                return super().run_group(runs, slot, hooks)
            why = batching_blocker(runs[0].cfg)
            if why is not None:
                self.echo(f"note: {len(runs)} seeds of {runs[0].group} run one after another: {why}")
                return super().run_group(runs, slot, hooks)
            self.echo(f"batched: {len(runs)} runs as one model: {', '.join(r.name for r in runs)}")
            modes = [start_mode(r) for r in runs]
            for r, m in zip(runs, modes):
                (r.run_dir / FAILED_MARKER).unlink(missing_ok=True)
                hooks.started(r, m)
            reported: set[int] = set()

            def fail(i: int, error: str, detail: str) -> None:
                r = runs[i]
                log = r.sweep_dir / "logs" / f"{r.name}.log"
                with open(log, "a") as fh:
                    fh.write(f"=== {_time.strftime('%Y-%m-%d %H:%M:%S')} in-process batched "
                             f"{[x.name for x in runs]}\n{detail}")
                reported.add(i)
                hooks.finished(r, Outcome("failed", None, error=error, log=str(log)))

            def dropped(i: int, err: DivergenceError) -> None:  # recorded at once: an interrupt may follow
                fail(i, f"DivergenceError: {err}", f"DivergenceError: {err}\n")

            try:
                group = MultiSeedTrainer([r.cfg for r in runs], echo=lambda s: self.echo(f"    {s}"),
                                         modes=[(m.resume, m.overwrite) for m in modes], on_drop=dropped)
                results = group.fit()
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # the group failed: its runs that had not finished are recorded as failed
                error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
                for i, r in enumerate(runs):
                    if i in reported:
                        continue
                    if is_finished(r):
                        hooks.finished(r, Outcome("finished", 0, summary=_read_summary(r)))
                    else:
                        fail(i, error, traceback.format_exc())
                return
            for i, (r, res) in enumerate(zip(runs, results)):
                if i not in reported and not isinstance(res, DivergenceError):
                    hooks.finished(r, Outcome("finished", 0, summary=res.summary))

    ex = BatchedSeedsExecutor(echo)
    ex.max_group = max(0, int(max_group))
    return ex

