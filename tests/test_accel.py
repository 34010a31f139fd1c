"""engine.compile (TrainStep): real where inductor runs, a clean fallback elsewhere; engine.cuda_graphs through a whole
run: a notice on the CPU, replayed graphs on CUDA (the GraphRunner itself: tests/test_graphs.py)."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from conftest import fit, one_run
from tfdistill.config import load_config
from tfdistill.engine import load_checkpoint, train
from tfdistill.engine.step import TrainStep
from tfdistill.errors import ConfigError

SHORT = ["method.name=tfd", "epochs=1", "engine.max_steps_per_epoch=2", "engine.tensorboard=false"]


def final_state(tmp_path, name):
    return load_checkpoint(tmp_path / "runs" / name / "last.pt")["model"]


def run_recording_warnings(cfg):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lines: list[str] = []
        run = fit(cfg, echo=lines.append)
    return run, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)], lines


def test_cuda_graphs_on_cpu_warns_once_and_runs_eagerly(tiny, tmp_path):
    train(load_config(None, [*tiny, *SHORT, "epochs=2", "name=eager"]), echo=lambda s: None)
    trainer, warned, lines = run_recording_warnings(
        load_config(None, [*tiny, *SHORT, "epochs=2", "name=graphs", "engine.cuda_graphs=true"]))
    graph_warnings = [w for w in warned if "cuda_graphs" in w]
    assert len(graph_warnings) == 1 and "needs a CUDA device" in graph_warnings[0]
    assert sum("needs a CUDA device" in line for line in lines) == 1, lines  # logged once, not per step
    assert trainer.train_step.mode == "eager"
    a, b = final_state(tmp_path, "eager"), final_state(tmp_path, "graphs")
    for k in a:
        assert torch.equal(a[k], b[k]), k  # the very same eager computation


def test_compile_with_unavailable_backend_warns_once_and_matches_eager(tiny, tmp_path, monkeypatch):
    train(load_config(None, [*tiny, *SHORT, "name=eager"]), echo=lambda s: None)
    monkeypatch.setenv("TFDISTILL_COMPILE_BACKEND", "no_such_backend")
    trainer, warned, _ = run_recording_warnings(
        load_config(None, [*tiny, *SHORT, "name=comp", "engine.compile=true"]))
    assert sum("engine.compile=true" in w for w in warned) == 1
    assert trainer.train_step.mode == "eager"
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
    eager = one_run(load_config(None, [*tiny, *SHORT, "name=eager"]))
    x, y, idx = next(iter(eager.data.train))
    first_eager = {k: float(v.detach()) for k, v in eager.train_step.step(x, y, idx)[2].items()}
    eager.close()
    shutil.rmtree(tmp_path / "runs" / "eager")
    train(load_config(None, [*tiny, *SHORT, "name=eager"]), echo=lambda s: None)

    trainer, warned, _ = run_recording_warnings(load_config(None, [*tiny, *SHORT, "name=comp", "engine.compile=true"]))
    assert not [w for w in warned if "engine.compile" in w], warned
    assert trainer.train_step.mode == "compiled"
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"], dict(counters["graph_break"])
    # the first step's loss terms (same weights, same batch) agree closely
    comp = one_run(load_config(None, [*tiny, *SHORT, "name=comp2", "engine.compile=true"]))
    first_comp = {k: float(v.detach()) for k, v in comp.train_step.step(x, y, idx)[2].items()}
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
    eager = one_run(load_config(None, [*heavy, "name=e"]))
    comp = one_run(load_config(None, [*heavy, "name=c", "engine.compile=true"]))
    x, y, idx = next(iter(eager.data.train))
    before = {k: v.detach().clone() for k, v in eager.student.state_dict().items()}
    _, _, te = eager.train_step.step(x, y, idx)
    _, _, tc = comp.train_step.step(x, y, idx)
    assert comp.train_step.mode == "compiled"
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

            acc = TrainStep(model, torch.optim.SGD(net.parameters(), lr=0.1),
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
        return TrainStep(model, torch.optim.SGD(net.parameters(), lr=0.1), torch.amp.GradScaler("cpu", enabled=False),
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


# ----------------------------------------------------------------------------------------------- CUDA only
cuda = pytest.mark.cuda  # skipped without a CUDA device (tests/conftest.py)


@cuda
def test_trainer_and_packed_seeds_with_cuda_graphs_on_gpu(tiny, tmp_path):
    common = [*tiny, "method.name=tfd", "epochs=2", "engine.device=cuda", "engine.precision=bf16",
              "engine.channels_last=true", "engine.tensorboard=false"]
    fit(load_config(None, [*common, "name=e"]))
    graph = fit(load_config(None, [*common, "name=g", "engine.cuda_graphs=true"]))
    assert graph.train_step.mode == "cuda_graph"
    re = [json.loads(x) for x in (tmp_path / "runs" / "e" / "metrics.jsonl").read_text().splitlines()]
    rg = [json.loads(x) for x in (tmp_path / "runs" / "g" / "metrics.jsonl").read_text().splitlines()]
    assert rg[0]["loss"] == pytest.approx(re[0]["loss"], rel=2e-2)
    res = train(load_config(None, [*common, "name=m", "seeds=[0,1]", "engine.cuda_graphs=true"]), echo=lambda s: None)
    assert [r.summary["pack"]["step"] for r in res] == ["packed_cuda_graph", "packed_cuda_graph"]
    # TFD's losses ran as the compiled region (fuse=auto on CUDA), inside the captured graphs
    summary = json.loads((tmp_path / "runs" / "g" / "summary.json").read_text())
    assert summary["method_info"]["tfd"]["fuse"] == "compiled", summary["method_info"]
    assert all(r.summary["method_info"]["tfd"]["fuse"] == "compiled" for r in res)
