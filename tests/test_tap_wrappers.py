"""FeatureTap through wrappers (torch.compile, DDP, Accelerate) and its passive capture mode (issue 28, items 1-2).

Compiled code is counted with a backend that counts the graphs it compiles and how often they run, so a test can
tell compiled code from eager code; ``fullgraph=True`` makes any graph break an error."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tfdistill.errors import ConfigError
from tfdistill.features import FeatureTap, is_compiled, plan_taps, token_grid, unwrap


class Counting:
    """A torch.compile backend that runs each graph as it is and counts graphs compiled and graph runs."""

    def __init__(self) -> None:
        self.graphs = 0
        self.runs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1

        def run(*args):
            self.runs += 1
            return gm.forward(*args)

        return run


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch.compiler.reset()  # structurally equal models share compiled code: start every test clean
    yield
    torch.compiler.reset()


def _resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def _plan(tap: FeatureTap) -> list[tuple[str, tuple[int, ...]]]:
    return [(t.name, t.shape) for t in tap.plan().taps]


class PixelTokens(nn.Module):
    """A tiny token model called as a Hugging Face model is: ``model(pixel_values=x)``, one class token."""

    def __init__(self, patch: int = 8, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(3))
        self.head = nn.Linear(dim, 10)

    def forward(self, pixel_values):
        x = self.embed(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x[:, 0])


# ------------------------------------------------------------------------------------------------ capture
def test_capture_records_the_last_forward_and_equals_tap_call():
    model = _resnet().eval()
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)
    ref = FeatureTap(model, "auto", embedding=True)
    _, want = ref(x2)
    want_emb = ref.embedding
    ref.remove()
    tap = FeatureTap(model, "auto", embedding=True)
    with tap.capture():
        model(x1)                       # discovers the plan on the first forward (eager)
        out = model(x2)                 # each forward's maps replace the previous one's
    torch.testing.assert_close(out, model(x2))
    assert [f.shape[0] for f in tap.features] == [3] * len(want)
    for a, b in zip(tap.features, want):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(tap.embedding, want_emb)
    model(x1)                           # outside the block: nothing recorded, nothing replaced
    assert tap.features[0].shape[0] == 3


def test_capture_refuses_in_one_line_when_nothing_ran():
    tap = FeatureTap(_resnet(), "auto")
    with pytest.raises(ConfigError, match="no features recorded yet"):
        tap.features
    tap.discover(torch.randn(1, 3, 32, 32))
    with tap.capture():
        pass
    with pytest.raises(ConfigError, match="no forward pass of the model was seen inside capture") as err:
        tap.features
    assert "\n" not in str(err.value)


def test_capture_accumulation_each_forward_replaces_and_grads_flow():
    model = _resnet().train()
    tap = FeatureTap(model, "auto")
    tap.discover(torch.randn(2, 3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    for half in (x[:2], x[2:]):         # gradient accumulation over two half batches
        with tap.capture():
            out = model(half)
        feats = tap.features
        assert all(f.shape[0] == 2 for f in feats)
        (F.cross_entropy(out, torch.zeros(2, dtype=torch.long)) + sum(f.pow(2).mean() for f in feats)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.layer1.parameters())


def test_capture_under_autocast_keeps_the_dtype_the_model_produced():
    model = _resnet().eval()
    x = torch.randn(2, 3, 32, 32)
    tap = FeatureTap(model, "auto")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, want = tap(x)
        with tap.capture():
            model(x)
    assert all(f.dtype == torch.bfloat16 for f in tap.features)
    for a, b in zip(tap.features, want):
        torch.testing.assert_close(a, b)


def test_keyword_input_gives_the_token_grid_of_a_non_square_input():
    """``model(pixel_values=x)``: the input size is read from the keyword, so a 32x64 input gives 4x8 grids."""
    model = PixelTokens().eval()
    x = torch.randn(2, 3, 32, 64)
    tap = FeatureTap(model, ["blocks.0", "blocks.2"], token_grid=token_grid(8, prefix=1))
    with tap.capture():
        model(pixel_values=x)
    assert [tuple(f.shape) for f in tap.features] == [(2, 16, 4, 8)] * 2
    _, feats = tap(pixel_values=x)                              # tap(x) with a keyword too
    assert [tuple(f.shape[2:]) for f in feats] == [(4, 8)] * 2
    assert [t.shape for t in tap.plan().taps] == [(16, 4, 8)] * 2
    model.token_grid = token_grid(8, prefix=1)                  # or declared on the model
    assert plan_taps(model, x, ["blocks.1"]).taps[0].shape == (16, 4, 8)
    with pytest.raises(ConfigError, match="token_grid: patch must be a positive int"):
        token_grid(0)


# ------------------------------------------------------------------------------------------------ compile
def test_capture_inside_compiled_code_fullgraph_no_graph_break():
    model = _resnet().eval()
    x = torch.randn(2, 3, 32, 32)
    tap = FeatureTap(model, "auto")
    _, want = tap(x)                                          # plan resolved before compiling
    backend = Counting()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with tap.capture():
        compiled(x)
    assert backend.graphs == 1 and backend.runs == 1          # one graph, it ran: the hooks are inside it
    for a, b in zip(tap.features, want):
        torch.testing.assert_close(a, b)
    with tap.capture():
        compiled(2 * x)
    assert backend.runs == 2
    assert not torch.equal(tap.features[0], want[0])           # the new forward's maps, not stale ones


def test_plain_tap_bound_to_a_compiled_model_runs_compiled_code():
    model = _resnet().eval()
    x = torch.randn(2, 3, 32, 32)
    tap = FeatureTap(model, "auto")
    tap.discover(x)
    backend = Counting()
    compiled = torch.compile(model, backend=backend)
    assert tap.bind(compiled) is tap and is_compiled(tap.call)
    out, feats = tap(x)
    assert backend.runs == 1                                  # compiled code ran, not eager
    torch.testing.assert_close(out, model(x))
    _, again = tap(x)
    assert backend.runs == 2 and backend.graphs >= 1
    for a, b in zip(feats, again):
        torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError, match="wraps a ResNet that is not the tapped model"):
        tap.bind(torch.compile(_resnet(), backend=backend))


def test_tap_made_on_the_compiled_model_plans_the_inner_module_and_calls_compiled_code():
    model = _resnet().train()
    x = torch.randn(2, 3, 32, 32)
    plain = FeatureTap(model, "auto")
    plain.discover(x)
    backend = Counting()
    compiled = torch.compile(model, backend=backend)
    tap = FeatureTap(compiled, "auto")
    assert tap.model is model and unwrap(compiled) is model
    out, feats = tap(x)                                       # discovery is an eager pass; the call is compiled
    assert _plan(tap) == _plan(plain) and not any("_orig_mod" in n for n in tap.names)
    assert backend.runs == 1
    (out.sum() + sum(f.mean() for f in feats)).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.layer1.parameters())


def test_late_attach_to_a_model_compiled_and_run_works_or_refuses_in_one_line_never_empty_or_stale():
    """torch 2.x skips hooks added after the compiled code exists (skip_nnmodule_hook_guards): the tap must then
    refuse in one line naming the fix; where a torch version does see the hooks, the maps must be right."""
    model = _resnet().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = FeatureTap(model, "auto")(x)[1]
    backend = Counting()
    compiled = torch.compile(model, backend=backend)
    compiled(x)                                               # compiled code made before any hook
    tap = FeatureTap(compiled, "auto")
    refused = False
    try:
        _, feats = tap(x)
    except ConfigError as err:
        refused = True
        assert "torch.compiler.reset" in str(err) and "\n" not in str(err)
    else:
        for a, b in zip(feats, want):
            torch.testing.assert_close(a, b)
    with tap.capture():
        compiled(2 * x)
    if refused:
        with pytest.raises(ConfigError, match="torch.compiler.reset"):
            tap.features                                      # never empty or stale maps
        torch.compiler.reset()                                # what the message says: now it works
    _, feats = tap(x)
    assert len(feats) == 3 and backend.runs >= 3
    for a, b in zip(feats, want):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------ DDP, Accelerate
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gloo():
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_one_process_same_plan_and_capture_through_it(gloo):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = _resnet().train()
    x = torch.randn(2, 3, 32, 32)
    plain = FeatureTap(model, "auto")
    plain.discover(x)
    ddp = DDP(model)
    tap = FeatureTap(ddp, "auto")
    tap.discover(x)
    assert _plan(tap) == _plan(plain) and not any(n.startswith("module.") for n in tap.names)
    with tap.capture():
        out = ddp(x)
    (out.sum() + sum(f.mean() for f in tap.features)).backward()
    assert len(tap.features) == 3
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("dynamo", [None, pytest.param("aot_eager", marks=pytest.mark.slow)])
def test_accelerate_prepared_model_same_plan_and_capture(dynamo):
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState

    model = _resnet().train()
    x = torch.randn(2, 3, 32, 32)
    plain = FeatureTap(model, "auto")
    plain.discover(x)
    try:
        acc = accelerate.Accelerator(cpu=True, **({"dynamo_backend": dynamo} if dynamo else {}))
        prepared = acc.prepare(model)
        assert unwrap(prepared) is model and is_compiled(prepared) == bool(dynamo)
        tap = FeatureTap(prepared, "auto")
        tap.discover(x)
        assert _plan(tap) == _plan(plain)
        with tap.capture():
            out = prepared(x)
        acc.backward(out.sum() + sum(f.mean() for f in tap.features))
        assert len(tap.features) == 3 and all(torch.isfinite(p.grad).all() for p in model.layer1.parameters())
    finally:
        AcceleratorState._reset_state(True)


# ------------------------------------------------------------------------------------------------ done when (#28)
def _tv():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10), 32


def _timm():
    timm = pytest.importorskip("timm")
    return timm.create_model("resnet10t", num_classes=10), 32


def _hf():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model("vit", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                            intermediate_size=64, image_size=32, patch_size=8, num_labels=10)
    return transformers.AutoModelForImageClassification.from_config(cfg), 32


def _logits(out):
    return getattr(out, "logits", out)


@pytest.mark.parametrize("build", [_tv, _timm, pytest.param(_hf, marks=pytest.mark.slow)],
                         ids=["torchvision", "timm", "hf"])
def test_same_plan_for_plain_compiled_ddp_and_accelerate_forms_and_compiled_code_runs(build, gloo):
    pytest.importorskip("accelerate")  # the [accelerate] extra (not in the torch-2.4.1/2.11.0 legs)
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from torch.nn.parallel import DistributedDataParallel as DDP

    model, size = build()
    model.train()
    x = torch.randn(2, 3, size, size)
    plain = FeatureTap(model, "auto")
    plain.discover(x)
    want = _plan(plain)
    assert len(want) >= 2 and not any(n.startswith(("module.", "_orig_mod.")) for n, _ in want)
    backend = Counting()
    compiled = torch.compile(model, backend=backend)
    try:
        prepared = Accelerator(cpu=True).prepare(model)
    finally:
        AcceleratorState._reset_state(True)
    for wrapped in (compiled, DDP(model), prepared):
        tap = FeatureTap(wrapped, "auto")
        tap.discover(x)
        assert _plan(tap) == want, type(wrapped).__name__
        tap.remove()
    out, feats = plain.bind(compiled)(x)                       # the plain tap, pointed at the compiled form
    assert backend.runs == 1 and [tuple(f.shape[1:]) for f in feats] == [s for _, s in want]
    (_logits(out).sum() + sum(f.float().pow(2).mean() for f in feats)).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.slow
def test_capture_under_aot_eager_fullgraph_train_mode_backward_matches_eager():
    """aot_eager traces the hooks' autograd too: fullgraph (any graph break is an error), train mode, backward."""
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for compiled in (False, True):
        model = _resnet().train()
        tap = FeatureTap(model, "auto")
        tap.discover(x)
        run = torch.compile(model, backend="aot_eager", fullgraph=True) if compiled else model
        with tap.capture():
            out = run(x)
        (out.sum() + sum(f.pow(2).mean() for f in tap.features)).backward()
        grads.append(model.layer1[0].conv1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
