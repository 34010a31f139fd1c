"""engine.cuda_graphs: the GraphRunner's decisions, warm-up, capture, replay, re-capture and fallbacks.

The runner's bookkeeping runs on the CPU with a fake backend whose capture records the step closure (the runner's real
capture code: static inputs, learning-rate tensors, fork/join) and whose replay runs it eagerly; the graph-safe SGD
arithmetic is checked against ``torch.optim.SGD``; the real captures are the CUDA-only tests at the end."""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import tfdistill.engine.graphs as graphs
from tfdistill.engine.graphs import WARMUP_STEPS, GraphRunner, sgd_step_tensor_lr
from tfdistill.engine.step import TrainStep, total_loss
from tfdistill.errors import ConfigError

KW = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


# ----------------------------------------------------------------------------------------------- the fake backend
class _FakeStream:
    def wait_stream(self, other) -> None:
        pass


class _FakeGraph:
    """Replays the captured step closure eagerly."""

    def __init__(self, body, events) -> None:
        self.body, self.events = body, events

    def replay(self) -> None:
        self.events.append("replay")
        self.body()


class FakeBackend:
    """The runner's CUDA calls on the CPU: streams do nothing, a capture records the closure (or raises ``fail``)."""

    device_type = "cpu"

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail, self.events = fail, []

    def stream(self):
        return _FakeStream()

    def current_stream(self):
        return _FakeStream()

    def use_stream(self, stream):
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        pass

    def capture(self, body, stream):
        self.events.append("capture")
        if self.fail is not None:
            raise self.fail
        return _FakeGraph(body, self.events)


# ----------------------------------------------------------------------------------------------- helpers
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
        return logits, {"ce": F.cross_entropy(logits.float(), y)}


def _net(seed: int) -> _Net:
    torch.manual_seed(seed)
    return _Net()


def _step(net: torch.nn.Module, log=None, **kw) -> TrainStep:
    opt = torch.optim.SGD(net.parameters(), **KW)
    return TrainStep(net, opt, torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"),
                     cuda_graphs=True, log=log, **kw)


class _Ref:
    """Plain eager steps of a copy of ``net`` with the graph path's update arithmetic: torch.optim.SGD's own step
    while there are no momentum buffers (the first step), :func:`sgd_step_tensor_lr` after that."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = copy.deepcopy(net)
        self.opt = torch.optim.SGD(self.net.parameters(), **KW)
        self.lrs = [torch.zeros(())]

    def step(self, x, y, idx, lr: float, tensor_lr: bool = True):
        self.opt.param_groups[0]["lr"] = lr
        logits, terms = self.net(x, y, idx)
        loss = total_loss(terms)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if tensor_lr and self.opt.state:
            self.lrs[0].fill_(lr)
            sgd_step_tensor_lr(self.opt, self.lrs)
        else:
            self.opt.step()
        return loss


def _batch(g: torch.Generator, n: int = 8):
    return torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g), torch.arange(n)


def _assert_same(a: torch.nn.Module, b: torch.nn.Module, what: str) -> None:
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), f"{what}: {k}"  # bit for bit: the same update, not merely a close one


class _Recorder:
    def __init__(self, log, k, cuda):
        self.log, self.k, self.cuda = log, k, cuda

    def __enter__(self):
        self.log.append((self.k, self.cuda))

    def __exit__(self, *exc):
        return False


def _drive(runner: GraphRunner, refs: list[_Ref], g: torch.Generator, steps: int, lr0: float, tensor_lr=True):
    """``steps`` steps of the runner and of the references (run k's lr: (k + 1) * lr, decaying), checked bitwise."""
    for i in range(steps):
        lr = lr0 * 0.8 ** i
        batches = [_batch(g) for _ in runner.members]
        for k, m in enumerate(runner.members):
            m.optimizer.param_groups[0]["lr"] = (k + 1) * lr
        outs = runner.step(batches)
        for k, (ref, (loss, _, terms), batch) in enumerate(zip(refs, outs, batches)):
            assert torch.equal(loss, ref.step(*batch, (k + 1) * lr, tensor_lr)), (k, i)
            assert set(terms) == {"ce"}
            _assert_same(runner.members[k].model, ref.net, f"run {k}, step {i}")


# ----------------------------------------------------------------------------------------------- graph-safe SGD
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
    """The eager warm-up steps apply the graph's own SGD arithmetic as soon as momentum buffers exist (from the second
    step of a fresh run; from the first after a resume), so a resumed run computes what the uninterrupted run's
    replays computed."""
    net = _net(0)
    ref = _Ref(net)
    runner = GraphRunner([_step(net)], backend=FakeBackend())
    g = torch.Generator().manual_seed(1)
    _drive(runner, [ref], g, WARMUP_STEPS, 0.1)
    assert not runner.captured and runner.members[0].steps_taken == WARMUP_STEPS
    # a resume: a new optimizer loaded from the old one's state; its very first (warm-up) step uses the tensor lr
    opt = torch.optim.SGD(net.parameters(), **KW)
    opt.load_state_dict(runner.members[0].optimizer.state_dict())
    resumed = TrainStep(net, opt, torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"),
                        cuda_graphs=True)
    _drive(GraphRunner([resumed], backend=FakeBackend()), [ref], g, 1, 0.03)


# ----------------------------------------------------------------------------------------------- the runner
def test_one_run_replayed_from_a_graph_is_bit_identical_to_eager_steps():
    """K = 1: WARMUP_STEPS eager warm-up steps, one capture (fork/join, as for K > 1), then replays; over several
    epochs with a changing lr the parameters stay bit-identical to plain eager steps with the same arithmetic."""
    net = _net(0)
    ref = _Ref(net)
    backend = FakeBackend()
    runner = GraphRunner([_step(net)], backend=backend)
    assert runner.graphs and runner.mode == "cuda_graph"
    g = torch.Generator().manual_seed(1)
    for epoch in range(3):
        runner.new_epoch()  # same structure: the graph is kept
        _drive(runner, [ref], g, 4, 0.1 * 0.5 ** epoch)
    assert runner.captured and runner.members[0].steps_taken == WARMUP_STEPS
    assert backend.events == ["capture"] + ["replay"] * (12 - WARMUP_STEPS)


def test_packed_runs_replayed_from_one_graph_are_bit_identical_to_eager_steps():
    """K = 2 with scopes: every run warms up in its own scope (CPU random streams only, ``cuda=False``), then ONE
    capture of both steps; the replays run outside the scopes; each run stays bit-identical to its eager steps."""
    nets = [_net(1), _net(2)]
    refs = [_Ref(n) for n in nets]
    scoped: list = []
    backend = FakeBackend()
    runner = GraphRunner([_step(n) for n in nets], [lambda cuda, k=k: _Recorder(scoped, k, cuda) for k in range(2)],
                         backend=backend)
    assert runner.mode == "packed_cuda_graph"
    g = torch.Generator().manual_seed(3)
    for epoch in range(3):
        runner.new_epoch()
        _drive(runner, refs, g, 4, 0.1 * 0.5 ** epoch)
    assert scoped == [(0, False), (1, False)] * WARMUP_STEPS
    assert backend.events == ["capture"] + ["replay"] * (12 - WARMUP_STEPS)
    assert [m.steps_taken for m in runner.members] == [WARMUP_STEPS] * 2 and runner.members[0].mode == "cuda_graph"


def test_a_structure_change_warms_up_and_captures_again():
    """A parameter's requires_grad toggled (a component froze a module): at the next epoch the graph is dropped,
    every run warms up again, then the steps are captured again; the numbers stay those of the eager steps."""
    nets = [_net(1), _net(2)]
    refs = [_Ref(n) for n in nets]
    backend = FakeBackend()
    runner = GraphRunner([_step(n) for n in nets], backend=backend)
    g = torch.Generator().manual_seed(4)
    _drive(runner, refs, g, WARMUP_STEPS + 2, 0.1)
    assert runner.captured and backend.events.count("capture") == 1
    for net in (nets[0], refs[0].net):
        net.body[0].weight.requires_grad_(False)
    runner.new_epoch()
    assert not runner.captured
    _drive(runner, refs, g, WARMUP_STEPS, 0.05)
    assert backend.events.count("capture") == 1 and [m.steps_taken for m in runner.members] == [2 * WARMUP_STEPS] * 2
    _drive(runner, refs, g, 3, 0.05)
    assert runner.captured and backend.events.count("capture") == 2
    assert backend.events[-4:] == ["capture", "replay", "replay", "replay"]


def test_a_dropped_run_leaves_the_others_going():
    """drop(k) (run k diverged): the graph is dropped; the others, warm already, are captured again at once, down to
    a group of one."""
    nets = [_net(1), _net(2), _net(3)]
    refs = [_Ref(n) for n in nets]
    backend = FakeBackend()
    runner = GraphRunner([_step(n) for n in nets], [lambda cuda: contextlib.nullcontext()] * 3, backend=backend)
    g = torch.Generator().manual_seed(5)
    _drive(runner, refs, g, WARMUP_STEPS + 1, 0.1)
    runner.drop(1)
    del refs[1]
    assert not runner.captured and len(runner.members) == 2
    _drive(runner, refs, g, 2, 0.05)
    assert backend.events.count("capture") == 2 and runner.mode == "packed_cuda_graph"
    runner.drop(0)
    del refs[0]
    _drive(runner, refs, g, 2, 0.02)
    assert backend.events.count("capture") == 3 and runner.mode == "cuda_graph"
    assert [m.steps_taken for m in runner.members] == [WARMUP_STEPS]


def test_a_failed_capture_leaves_the_group_eager_with_one_notice(monkeypatch):
    """A capture that raises: one notice (run 0's log), that step redone eagerly, eager from then on (the optimizer's
    own update), and no later runner of the process tries to capture."""
    monkeypatch.setattr(graphs, "_CAPTURE_BROKEN", None)  # restored after the test: later tests capture again
    nets = [_net(1), _net(2)]
    refs = [_Ref(n) for n in nets]
    logs: list[list[str]] = [[], []]
    backend = FakeBackend(fail=RuntimeError("operation not permitted when stream is capturing"))
    runner = GraphRunner([_step(n, log=logs[k].append) for k, n in enumerate(nets)], backend=backend)
    g = torch.Generator().manual_seed(6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _drive(runner, refs, g, WARMUP_STEPS, 0.1)
        _drive(runner, refs, g, 3, 0.05, tensor_lr=False)
    assert backend.events == ["capture"]
    assert sum("capturing the train step failed" in str(w.message) for w in caught) == 1
    assert len(logs[0]) == 1 and "RuntimeError: operation not permitted" in logs[0][0] and not logs[1]
    assert not runner.graphs and runner.mode == "sequential_eager" and runner.members[0].mode == "eager"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        later = GraphRunner([_step(_net(7))], backend=FakeBackend())
    assert not later.graphs and "a capture failed earlier in this process" in str(caught[0].message)


def test_no_graphs_unless_asked_and_the_steps_run_one_after_another():
    """cuda_graphs=false: the runner steps each run eagerly in its scope (with the CUDA generator), no capture."""
    nets = [_net(1), _net(2)]
    refs = [_Ref(n) for n in nets]
    scoped: list = []
    backend = FakeBackend()
    plain = [TrainStep(n, torch.optim.SGD(n.parameters(), **KW), torch.amp.GradScaler("cpu", enabled=False),
                       device=torch.device("cpu")) for n in nets]
    runner = GraphRunner(plain, [lambda cuda, k=k: _Recorder(scoped, k, cuda) for k in range(2)], backend=backend)
    assert not runner.graphs and runner.mode == "sequential_eager"
    _drive(runner, refs, torch.Generator().manual_seed(8), WARMUP_STEPS + 2, 0.1, tensor_lr=False)
    assert backend.events == [] and scoped == [(0, True), (1, True)] * (WARMUP_STEPS + 2)


@pytest.mark.parametrize("env_mode, graphed_mode", [("reduce-overhead", None),
                                                    ("max-autotune", "max-autotune-no-cudagraphs")])
def test_a_graphed_compiled_step_is_compiled_again_without_graphs_of_its_own(monkeypatch, env_mode, graphed_mode):
    """Once the runner decided to capture a compiled step, the step compiles its forward again in a mode that
    captures no CUDA graphs of its own; the captured step (replayed eagerly here) is that compiled forward."""
    seen, calls = [], [0]

    def fake_compile(fn, **kw):
        seen.append(kw.get("mode"))

        def compiled(*args):
            calls[0] += 1
            return fn(*args)
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setenv("TFDISTILL_COMPILE_MODE", env_mode)
    net = _net(0)
    ref = _Ref(net)
    step = _step(net, compile=True)
    assert seen == [env_mode] and step.mode == "compiled"
    runner = GraphRunner([step], backend=FakeBackend())
    assert seen == [env_mode, graphed_mode] and step.mode == runner.mode == "compiled+cuda_graph"
    _drive(runner, [ref], torch.Generator().manual_seed(9), WARMUP_STEPS + 2, 0.1)
    assert runner.captured and calls[0] == WARMUP_STEPS + 2


def test_cuda_graphs_on_the_cpu_notes_it_once_and_steps_eagerly():
    net = _net(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = _step(net)
        runner = GraphRunner([step])  # the real (CUDA) backend
        GraphRunner([step])  # a second runner over the same step: no second notice
    assert not runner.graphs and runner.mode == "eager"
    assert len(caught) == 1 and "needs a CUDA device (this run uses cpu)" in str(caught[0].message)


def test_fp16_with_cuda_graphs_is_refused_on_cuda():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="fp16"):
        GraphRunner([TrainStep(lambda *a: None, opt, None, device=torch.device("cuda"), precision="fp16",
                               cuda_graphs=True)])
    with warnings.catch_warnings(record=True) as caught:  # on the CPU it is a no-op notice, not an error
        warnings.simplefilter("always")
        runner = GraphRunner([TrainStep(lambda *a: None, opt, None, device=torch.device("cpu"), precision="fp16",
                                        cuda_graphs=True)])
    assert runner.mode == "eager" and len(caught) == 1


def test_non_sgd_optimizer_gets_no_graph_on_cuda_with_a_notice():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner = GraphRunner([TrainStep(lambda *a: None, opt, None, device=torch.device("cuda"), precision="bf16",
                                        cuda_graphs=True)])
    assert not runner.graphs and "SGD only" in str(caught[0].message)


# ----------------------------------------------------------------------------------------------- CUDA only
cuda = pytest.mark.cuda  # skipped without a CUDA device (tests/conftest.py)


def _pair(sync=False, precision="fp32"):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    a = _Net(sync).to(dev)
    b = _Net(sync).to(dev)
    b.load_state_dict(a.state_dict())
    mk = lambda m: torch.optim.SGD(m.parameters(), **KW)  # noqa
    oa, ob = mk(a), mk(b)
    sa, sb = (torch.amp.GradScaler("cuda", enabled=False) for _ in range(2))
    eager = TrainStep(a, oa, sa, device=dev, precision=precision)
    graph = TrainStep(b, ob, sb, device=dev, precision=precision, cuda_graphs=True)
    return (a, oa, eager), (b, ob, graph)


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_steps_match_eager_steps(precision):
    (a, oa, eager), (b, ob, graph) = _pair(precision=precision)
    runner = GraphRunner([graph])
    g = torch.Generator(device="cuda").manual_seed(1)
    for step in range(12):
        x = torch.randn(32, 8, device="cuda", generator=g)
        y = torch.randint(0, 4, (32,), device="cuda", generator=g)
        idx = torch.arange(32, device="cuda")
        for opt in (oa, ob):
            opt.param_groups[0]["lr"] = 0.1 * (0.8 ** step)  # a changing lr must reach the graph
        la = eager.step(x, y, idx)[0].item()
        lb = runner.step([(x, y, idx)])[0][0].item()
        assert lb == pytest.approx(la, rel=1e-4, abs=1e-6), step
        if step == 5:
            runner.new_epoch()  # same structure: the graph is kept
    assert runner.mode == "cuda_graph" and runner.captured
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    # a structural change (a frozen layer) makes the next epoch re-capture
    b.body[0].weight.requires_grad_(False)
    runner.new_epoch()
    assert not runner.captured


@cuda
def test_packed_cuda_graph_steps_match_eager_steps():
    """Two runs captured into one graph (a stream each) follow their eager steps."""
    pairs = [_pair(), _pair()]
    runner = GraphRunner([p[1][2] for p in pairs])
    g = torch.Generator(device="cuda").manual_seed(2)
    for step in range(8):
        batches = [(torch.randn(32, 8, device="cuda", generator=g), torch.randint(0, 4, (32,), device="cuda",
                                                                                  generator=g),
                    torch.arange(32, device="cuda")) for _ in pairs]
        outs = runner.step(batches)
        for ((_, _, eager), _), batch, out in zip(pairs, batches, outs):
            assert out[0].item() == pytest.approx(eager.step(*batch)[0].item(), rel=1e-4, abs=1e-6), step
    assert runner.mode == "packed_cuda_graph" and runner.captured
    for (a, _, _), (b, _, _) in pairs:
        for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
            torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5)


@cuda
def test_uncapturable_step_falls_back_to_eager_with_one_notice(monkeypatch):
    monkeypatch.setattr(graphs, "_CAPTURE_BROKEN", None)  # restored after the test: later tests capture again
    (a, oa, eager), (b, ob, graph) = _pair(sync=True)
    runner = GraphRunner([graph])
    x = torch.randn(32, 8, device="cuda")
    y = torch.randint(0, 4, (32,), device="cuda")
    idx = torch.arange(32, device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(6):
            eager.step(x, y, idx)
            runner.step([(x, y, idx)])
    assert runner.mode == "eager"
    assert sum("capturing the train step failed" in str(w.message) for w in caught) == 1
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6)
    # no later runner of this process tries to capture again
    (_, _, _), (_, _, again) = _pair()
    assert not GraphRunner([again]).graphs
