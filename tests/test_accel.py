"""engine.compile / engine.cuda_graphs: real on CUDA, clean fallbacks elsewhere; graph-safe SGD arithmetic."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from tfdistill.config import load_config
from tfdistill.engine import Trainer, load_checkpoint, train
from tfdistill.engine.accel import Accelerator, sgd_step_tensor_lr
from tfdistill.errors import ConfigError

SHORT = ["method.name=tfd", "epochs=1", "engine.max_steps_per_epoch=2", "engine.tensorboard=false"]


def final_state(tmp_path, name):
    return load_checkpoint(tmp_path / "runs" / name / "last.pt")["model"]


def run_recording_warnings(cfg):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lines: list[str] = []
        trainer = Trainer(cfg, echo=lines.append)
        trainer.fit()
    return trainer, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)], lines


def test_cuda_graphs_on_cpu_warns_once_and_runs_eagerly(tiny, tmp_path):
    train(load_config(None, [*tiny, *SHORT, "epochs=2", "name=eager"]), echo=lambda s: None)
    trainer, warned, lines = run_recording_warnings(
        load_config(None, [*tiny, *SHORT, "epochs=2", "name=graphs", "engine.cuda_graphs=true"]))
    graph_warnings = [w for w in warned if "cuda_graphs" in w]
    assert len(graph_warnings) == 1 and "needs a CUDA device" in graph_warnings[0]
    assert sum("needs a CUDA device" in line for line in lines) == 1, lines  # logged once, not per step
    assert trainer.accel.mode == "eager"
    a, b = final_state(tmp_path, "eager"), final_state(tmp_path, "graphs")
    for k in a:
        assert torch.equal(a[k], b[k]), k  # the very same eager computation


def test_compile_with_unavailable_backend_warns_once_and_matches_eager(tiny, tmp_path, monkeypatch):
    train(load_config(None, [*tiny, *SHORT, "name=eager"]), echo=lambda s: None)
    monkeypatch.setenv("TFDISTILL_COMPILE_BACKEND", "no_such_backend")
    trainer, warned, _ = run_recording_warnings(
        load_config(None, [*tiny, *SHORT, "name=comp", "engine.compile=true"]))
    assert sum("engine.compile=true" in w for w in warned) == 1
    assert trainer.accel.mode == "eager"
    a, b = final_state(tmp_path, "eager"), final_state(tmp_path, "comp")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _inductor_unavailable() -> str | None:
    try:
        import torch._inductor.config as ic  # noqa: F401
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exc:  # no inductor / no C++ compiler on this machine
        return f"inductor cannot compile here: {type(exc).__name__}: {exc}"
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python"
    return None


@pytest.mark.slow  # inductor's C++ compilation: minutes on 2 busy cores
@pytest.mark.skipif(_inductor_unavailable() is not None, reason=str(_inductor_unavailable()))
def test_compile_trains_and_matches_eager(tiny, tmp_path, monkeypatch):
    """Inductor (C++ on the CPU) compiles the forward + TFD loss and the backward into one graph each; the
    fused kernels round differently, so the results agree with eager to float tolerance, not bitwise."""
    monkeypatch.delenv("TFDISTILL_COMPILE_BACKEND", raising=False)
    # inductor's on-disk cache of its own (a shared /tmp/torchinductor_<user> may hold a file that another process,
    # killed while compiling, left truncated)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    from torch._dynamo.utils import counters

    counters.clear()
    eager = Trainer(load_config(None, [*tiny, *SHORT, "name=eager"]), echo=lambda s: None)
    x, y, idx = next(iter(eager.data.train))
    first_eager = {k: float(v.detach()) for k, v in eager.step(x, y, idx)[2].items()}
    shutil.rmtree(tmp_path / "runs" / "eager")
    train(load_config(None, [*tiny, *SHORT, "name=eager"]), echo=lambda s: None)

    trainer, warned, _ = run_recording_warnings(load_config(None, [*tiny, *SHORT, "name=comp", "engine.compile=true"]))
    assert not [w for w in warned if "engine.compile" in w], warned
    assert trainer.accel.mode == "compiled"
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"], dict(counters["graph_break"])
    # the first step's loss terms (same weights, same batch) agree closely
    comp = Trainer(load_config(None, [*tiny, *SHORT, "name=comp2", "engine.compile=true"]), echo=lambda s: None)
    first_comp = {k: float(v.detach()) for k, v in comp.step(x, y, idx)[2].items()}
    assert first_comp.keys() == first_eager.keys()
    for k in first_eager:
        assert first_comp[k] == pytest.approx(first_eager[k], rel=1e-4, abs=1e-6), k
    # after the run: weights within float tolerance of eager (BatchNorm-bias gradients are cancelling sums,
    # so a different summation order shows up there first)
    a, b = final_state(tmp_path, "eager"), final_state(tmp_path, "comp")
    for k in a:
        if a[k].is_floating_point():
            rel = ((a[k] - b[k]).norm() / (a[k].norm() + 1e-8)).item()
            assert rel < 1e-2, (k, rel)
        else:
            assert torch.equal(a[k], b[k]), k


def test_compiled_step_gives_tfd_its_gradients(tiny, tmp_path, monkeypatch):
    """engine.compile=true traced by dynamo + AOTAutograd (the ``aot_eager`` backend: no code generation, so fast and
    on every torch of the CI matrix): one TFD step with heavy loss weights moves every weight like the eager step.
    On torch 2.4-2.11 the strided pooling Function's backward used to vanish in that trace, and the depth-wise
    gradient with it -- the loose weight check of the inductor test above could not see that."""
    monkeypatch.setenv("TFDISTILL_COMPILE_BACKEND", "aot_eager")
    heavy = [*tiny, "method.name=tfd", "method.tfd.alpha=50", "method.tfd.beta=5", "epochs=1",
             "engine.tensorboard=false", "optim.weight_decay=0", "optim.momentum=0"]
    eager = Trainer(load_config(None, [*heavy, "name=e"]), echo=lambda s: None)
    comp = Trainer(load_config(None, [*heavy, "name=c", "engine.compile=true"]), echo=lambda s: None)
    x, y, idx = next(iter(eager.data.train))
    before = {k: v.detach().clone() for k, v in eager.student.state_dict().items()}
    _, _, te = eager.step(x, y, idx)
    _, _, tc = comp.step(x, y, idx)
    assert comp.accel.mode == "compiled"
    for k in te:
        torch.testing.assert_close(tc[k], te[k], rtol=1e-4, atol=1e-7)
    moved = 0
    a, b = eager.student.state_dict(), comp.student.state_dict()
    for k in a:
        if a[k].is_floating_point() and not torch.equal(a[k], before[k]):
            moved += 1
            torch.testing.assert_close(b[k] - before[k], a[k] - before[k], rtol=2e-3, atol=1e-7, msg=k)
    assert moved > 10


def test_many_compiled_steps_in_one_process_all_run_compiled(monkeypatch):
    """A packed group of K runs (or a sweep's runs one after another) builds one compiled step per run, all on the
    same code, one cache entry per architecture; past dynamo's default limit of 8 entries per code object the 9th
    and later would silently run eagerly while reporting ``compiled``. Twelve runs of twelve widths: every step must
    run the compiled graph (the backend's graph counts its calls)."""
    import torch._dynamo
    from torch._dynamo.backends.registry import _BACKENDS, register_backend

    calls = [0]

    def counting(gm, example_inputs):
        def run(*args):
            calls[0] += 1
            return gm.forward(*args)
        return run

    if "tfd_counting_test" not in _BACKENDS:
        register_backend(name="tfd_counting_test")(lambda gm, ex: _COUNTING[0](gm, ex))
    _COUNTING[0] = counting
    monkeypatch.setenv("TFDISTILL_COMPILE_BACKEND", "tfd_counting_test")
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)
    try:
        for k in range(12):
            net = torch.nn.Sequential(torch.nn.Linear(6, 5 + k), torch.nn.ReLU(), torch.nn.Linear(5 + k, 3))

            def model(x, y, idx, net=net):
                logits = net(x)
                return logits, {"ce": torch.nn.functional.cross_entropy(logits, y)}

            acc = Accelerator(model, torch.optim.SGD(net.parameters(), lr=0.1),
                              torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"), compile=True)
            before = calls[0]
            for _ in range(2):
                acc.step(x, y, torch.arange(4))
            assert acc.mode == "compiled"
            assert calls[0] == before + 2, f"run {k + 1} of 12 ran eagerly (dynamo's cache limit)"
    finally:
        torch._dynamo.reset()


_COUNTING: list = [None]


def test_compile_options_from_the_environment(monkeypatch):
    """TFDISTILL_COMPILE_OPTIONS (a JSON object) reaches the compiler as torch.compile's ``options``; a bad value,
    or a mode given too, is one clear ConfigError naming the variable."""
    import torch._dynamo
    from torch._dynamo.backends.registry import _BACKENDS, register_backend

    got: list = []
    if "tfd_options_test" not in _BACKENDS:
        register_backend(name="tfd_options_test")(lambda gm, ex, **kw: _OPTIONS_SEEN[0](gm, kw))
    _OPTIONS_SEEN[0] = lambda gm, kw: got.append(kw.get("options")) or gm.forward
    monkeypatch.setenv("TFDISTILL_COMPILE_BACKEND", "tfd_options_test")
    net = torch.nn.Linear(6, 3)

    def model(x, y, idx):
        logits = net(x)
        return logits, {"ce": torch.nn.functional.cross_entropy(logits, y)}

    def build():
        return Accelerator(model, torch.optim.SGD(net.parameters(), lr=0.1), torch.amp.GradScaler("cpu", enabled=False),
                           device=torch.device("cpu"), compile=True)

    torch._dynamo.reset()
    try:
        monkeypatch.setenv("TFDISTILL_COMPILE_OPTIONS", '{"coordinate_descent_tuning": true}')
        acc = build()
        acc.step(torch.randn(4, 6), torch.randint(0, 3, (4,)), torch.arange(4))
        assert acc.mode == "compiled" and got == [{"coordinate_descent_tuning": True}]
    finally:
        torch._dynamo.reset()
    for bad in ("{coordinate_descent_tuning: 1}", "[1, 2]"):
        monkeypatch.setenv("TFDISTILL_COMPILE_OPTIONS", bad)
        with pytest.raises(ConfigError, match="TFDISTILL_COMPILE_OPTIONS must be a JSON object"):
            build()
    monkeypatch.setenv("TFDISTILL_COMPILE_OPTIONS", "{}")
    monkeypatch.setenv("TFDISTILL_COMPILE_MODE", "max-autotune-no-cudagraphs")
    with pytest.raises(ConfigError, match="both set"):
        build()


_OPTIONS_SEEN: list = [None]


@pytest.mark.parametrize("momentum, nesterov, wd, dampening", [
    (0.9, False, 5e-4, 0.0), (0.9, True, 5e-4, 0.0), (0.0, False, 0.0, 0.0), (0.5, False, 1e-3, 0.1)])
def test_graph_sgd_matches_torch_sgd(momentum, nesterov, wd, dampening):
    """The in-graph SGD (tensor lr) reproduces torch.optim.SGD over several steps with changing lrs."""
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (5,), (2, 2, 3)]
    pa = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    kw = dict(lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd, dampening=dampening)
    oa, ob = torch.optim.SGD(pa, **kw), torch.optim.SGD(pb, **kw)
    lrs = [torch.zeros(())]
    for step, lr in enumerate([0.1, 0.05, 0.02, 0.2]):
        grads = [torch.randn(*s, generator=g) for s in shapes]
        for p, q, gr in zip(pa, pb, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        oa.param_groups[0]["lr"] = ob.param_groups[0]["lr"] = lr
        oa.step()
        if step == 0:
            ob.step()  # the first (eager) step creates the momentum buffers, as the warm-up does
        else:
            lrs[0].fill_(lr)
            sgd_step_tensor_lr(ob, lrs)
        for p, q in zip(pa, pb):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    if momentum:
        for p, q in zip(pa, pb):
            torch.testing.assert_close(oa.state[p]["momentum_buffer"], ob.state[q]["momentum_buffer"])


def test_graph_warm_up_uses_the_graph_update_once_momentum_buffers_exist():
    """With CUDA graphs the eager warm-up steps apply the graph's own SGD arithmetic as soon as momentum buffers
    exist (from the second step of a fresh run; from the first after a resume), so a resumed run computes what the
    uninterrupted run's replays computed. Checked on the CPU by forcing the graph path's eager steps."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    ref.load_state_dict(net.state_dict())
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt, ropt = torch.optim.SGD(net.parameters(), **kw), torch.optim.SGD(ref.parameters(), **kw)

    def model(x, y, idx):
        logits = net(x)
        return logits, {"ce": torch.nn.functional.cross_entropy(logits, y)}

    scaler = torch.amp.GradScaler("cpu", enabled=False)
    acc = Accelerator(model, opt, scaler, device=torch.device("cpu"))
    acc.use_graphs = True  # what a CUDA run has; its eager steps are the warm-up (no capture happens here)
    lrs = [torch.zeros(())]
    g = torch.Generator().manual_seed(1)
    for step in range(4):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.param_groups[0]["lr"] = ropt.param_groups[0]["lr"] = 0.1 / (step + 1)
        acc._eager_step(acc.forward, x, y, torch.arange(8))
        ropt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        if step == 0:
            ropt.step()  # creates the momentum buffers
        else:
            lrs[0].fill_(ropt.param_groups[0]["lr"])
            sgd_step_tensor_lr(ropt, lrs)
        for a, b in zip(net.parameters(), ref.parameters()):
            assert torch.equal(a, b), step  # bit for bit: the same update, not merely a close one


def test_fp16_with_cuda_graphs_is_refused_on_cuda():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="fp16"):
        Accelerator(lambda *a: None, opt, None, device=torch.device("cuda"), precision="fp16", cuda_graphs=True)
    with warnings.catch_warnings(record=True) as caught:  # on the CPU it is a no-op notice, not an error
        warnings.simplefilter("always")
        acc = Accelerator(lambda *a: None, opt, None, device=torch.device("cpu"), precision="fp16", cuda_graphs=True)
    assert acc.mode == "eager" and len(caught) == 1


def test_non_sgd_optimizer_gets_no_graph_on_cuda_with_a_notice():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acc = Accelerator(lambda *a: None, opt, None, device=torch.device("cuda"), precision="bf16", cuda_graphs=True)
    assert not acc.use_graphs and "SGD only" in str(caught[0].message)


# ----------------------------------------------------------------------------------------------- CUDA only
cuda = pytest.mark.cuda  # skipped without a CUDA device (tests/conftest.py)


class _Net(torch.nn.Module):
    """(x, y, idx) -> (logits, terms), like a Method; ``sync`` adds a host synchronisation (uncapturable)."""

    def __init__(self, sync: bool = False) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                        torch.nn.Linear(16, 4))
        self.sync = sync

    def forward(self, x, y, idx):
        logits = self.body(x)
        if self.sync:
            float(logits.sum())
        return logits, {"ce": torch.nn.functional.cross_entropy(logits.float(), y)}


def _pair(sync=False, precision="fp32", **graph_kw):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    a = _Net(sync).to(dev)
    b = _Net(sync).to(dev)
    b.load_state_dict(a.state_dict())
    mk = lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)  # noqa
    oa, ob = mk(a), mk(b)
    sa, sb = (torch.amp.GradScaler("cuda", enabled=False) for _ in range(2))
    eager = Accelerator(a, oa, sa, device=dev, precision=precision)
    graph = Accelerator(b, ob, sb, device=dev, precision=precision, cuda_graphs=True, **graph_kw)
    return (a, oa, eager), (b, ob, graph)


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_steps_match_eager_steps(precision):
    (a, oa, eager), (b, ob, graph) = _pair(precision=precision)
    g = torch.Generator(device="cuda").manual_seed(1)
    for step in range(12):
        x = torch.randn(32, 8, device="cuda", generator=g)
        y = torch.randint(0, 4, (32,), device="cuda", generator=g)
        idx = torch.arange(32, device="cuda")
        for opt in (oa, ob):
            opt.param_groups[0]["lr"] = 0.1 * (0.8 ** step)  # a changing lr must reach the graph
        la = eager.step(x, y, idx)[0].item()
        lb = graph.step(x, y, idx)[0].item()
        assert lb == pytest.approx(la, rel=1e-4, abs=1e-6), step
        if step == 5:
            graph.new_epoch()  # same structure: the graph is kept
    assert graph.mode == "cuda_graph" and graph._graph is not None
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    # a structural change (a frozen layer) makes the next epoch re-capture
    b.body[0].weight.requires_grad_(False)
    graph.new_epoch()
    assert graph._graph is None


@cuda
def test_uncapturable_step_falls_back_to_eager_with_one_notice(monkeypatch):
    import tfdistill.engine.accel as accel_module

    monkeypatch.setattr(accel_module, "_CAPTURE_BROKEN", None)  # restored after the test: later tests capture again
    (a, oa, eager), (b, ob, graph) = _pair(sync=True)
    x = torch.randn(32, 8, device="cuda")
    y = torch.randint(0, 4, (32,), device="cuda")
    idx = torch.arange(32, device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(6):
            eager.step(x, y, idx)
            graph.step(x, y, idx)
    assert graph.mode == "eager"
    assert sum("capturing the train step failed" in str(w.message) for w in caught) == 1
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6)
    # no later accelerator of this process tries to capture again
    (_, _, _), (_, _, again) = _pair()
    assert not again.use_graphs


@cuda
def test_trainer_and_packed_seeds_with_cuda_graphs_on_gpu(tiny, tmp_path):
    common = [*tiny, "method.name=tfd", "epochs=2", "engine.device=cuda", "engine.precision=bf16",
              "engine.channels_last=true", "engine.tensorboard=false"]
    eager = Trainer(load_config(None, [*common, "name=e"]), echo=lambda s: None)
    eager.fit()
    graph = Trainer(load_config(None, [*common, "name=g", "engine.cuda_graphs=true"]), echo=lambda s: None)
    graph.fit()
    assert graph.accel.mode == "cuda_graph"
    re = [json.loads(x) for x in (tmp_path / "runs" / "e" / "metrics.jsonl").read_text().splitlines()]
    rg = [json.loads(x) for x in (tmp_path / "runs" / "g" / "metrics.jsonl").read_text().splitlines()]
    assert rg[0]["loss"] == pytest.approx(re[0]["loss"], rel=2e-2)
    res = train(load_config(None, [*common, "name=m", "seeds=[0,1]", "engine.cuda_graphs=true"]), echo=lambda s: None)
    assert [r.summary["pack"]["step"] for r in res] == ["packed_cuda_graph", "packed_cuda_graph"]
    # TFD's losses ran as the compiled region (fuse=auto on CUDA), inside the captured graphs
    summary = json.loads((tmp_path / "runs" / "g" / "summary.json").read_text())
    assert summary["method_info"]["tfd"]["fuse"] == "compiled", summary["method_info"]
    assert all(r.summary["method_info"]["tfd"]["fuse"] == "compiled" for r in res)


def test_step_runner_packs_after_every_run_warmed_up(monkeypatch):
    """The control flow of a packed CUDA group, simulated on the CPU (the capture itself needs a GPU): every run warms
    up WARMUP_STEPS eager steps, then ONE capture of all K steps, then replays; a dropped run or a changed step
    structure means warming up / capturing again; a failed capture leaves the group eager."""
    from tfdistill.engine.accel import WARMUP_STEPS, StepRunner

    class Fake:
        def __init__(self):
            self.use_graphs, self.steps, self.struct, self.calls = True, 0, 1, []
            self._static_in = None

        def structure(self):
            return self.struct

        def warmup_step(self, *b):
            self.calls.append("warm")
            self.steps += 1
            return ("w",)

        def step(self, *b):
            self.calls.append("eager")
            return ("e",)

    events = []

    def capture(self, batches):
        events.append(("capture", len(self.accels)))
        if fail:  # a capture that fails: every member is left eager
            for a in self.accels:
                a.use_graphs = False
            return None
        self._graph, self._signature = object(), self._structure()
        for a, b in zip(self.accels, batches):
            a._static_in, a.steps = b, a.steps + 1
        return [("c",)] * len(self.accels)

    def replay(self, batches):
        events.append(("replay", len(self.accels)))
        return [("r",)] * len(self.accels)

    monkeypatch.setattr(StepRunner, "_capture", capture)
    monkeypatch.setattr(StepRunner, "_replay", replay)
    fail = False
    accels = [Fake(), Fake(), Fake()]
    scoped = []
    runner = StepRunner(accels, [lambda cuda, k=k: _Recorder(scoped, k, cuda) for k in range(3)])
    batch = (torch.zeros(2, 3), torch.zeros(2), torch.zeros(2))
    for _ in range(WARMUP_STEPS + 3):
        runner.step([batch] * len(runner.accels))
    assert [a.calls for a in accels] == [["warm"] * WARMUP_STEPS] * 3
    assert events == [("capture", 3), ("replay", 3), ("replay", 3)]
    assert scoped[:3] == [(0, False), (1, False), (2, False)]  # each run's own RNG, not the CUDA generator
    assert runner.mode == "packed_cuda_graph"
    runner.drop(1)  # a run diverged: the other two are captured again, at once (they are warm)
    runner.step([batch] * 2)
    assert events[-1] == ("capture", 2)
    accels[0].struct = 2  # e.g. a component froze a module: warm up again, then capture
    runner.new_epoch()
    for _ in range(WARMUP_STEPS + 1):
        runner.step([batch] * 2)
    assert accels[0].calls.count("warm") == 2 * WARMUP_STEPS and events[-1] == ("capture", 2)
    runner.drop(0)  # one run left: its own accelerator steps it (its own graph)
    runner.step([batch])
    assert accels[2].calls[-1] == "eager"
    fail = True
    warm = [Fake(), Fake()]
    for a in warm:
        a.steps = WARMUP_STEPS
    runner = StepRunner(warm)
    runner.step([batch] * 2)  # the capture fails: this step and all later ones run eagerly, run by run
    runner.step([batch] * 2)
    assert events[-1] == ("capture", 2) and [a.calls for a in warm] == [["eager", "eager"]] * 2
    assert not runner.packed_graph and not runner.graphs


class _Recorder:
    def __init__(self, log, k, cuda):
        self.log, self.k, self.cuda = log, k, cuda

    def __enter__(self):
        self.log.append((self.k, self.cuda))

    def __exit__(self, *exc):
        return False
