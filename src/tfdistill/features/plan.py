"""The tap plan: which modules are tapped, their (C, H, W) maps, strides, the rule that chose them, and what each
map feeds in TFD -- printed by ``print(tap)``, :meth:`FeatureTap.plan`, ``tfdistill taps MODEL`` and the run header.

What TFD does with the maps (see :mod:`tfdistill.losses.tfd`)
-------------------------------------------------------------
* Depth-wise: every pair ``i < j`` (``L (L - 1) / 2`` pairs for ``L`` maps); the deeper map ``j`` is the target
  (``top_down``); the larger map is average-pooled to the smaller one's size and both are cropped to their first
  ``min(C_i, C_j)`` channels. When all maps share one size (a ViT's token grids) nothing is pooled: each pair
  compares the two maps position by position, cropped to the common channels -- still well defined.
* Width-wise: one term per map with ``C >= 2``: the ``C // 2`` most important channels are the target of the next
  ``C // 2`` (an odd ``C`` leaves its least important channel out). It never looks at other maps, so equal sizes
  change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .layouts import NCHW, Layout

__all__ = ["Tap", "TapPlan"]


@dataclass(frozen=True)
class Tap:
    name: str
    """Module path (as in ``model.named_modules()``)."""
    shape: tuple[int, ...]
    """(C, H, W) of the map on the example input (after the layout)."""
    stride: str
    """Input pixels per map position (e.g. ``"16"``; ``"~7.5"`` where the input does not divide evenly)."""
    rule: str
    """How it was chosen: ``named``, ``declared (...)``, ``table (torchvision ...)`` or ``probe (fallback)``."""
    layout: Layout = NCHW


@dataclass
class TapPlan:
    model: str
    input_shape: tuple[int, ...] | None
    taps: list[Tap]
    rule: str
    """The rule that chose the taps (one rule per plan), with its selection note."""
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.taps]

    def depth_pairs(self) -> list[tuple[int, int]]:
        n = len(self.taps)
        return [(i, j) for i in range(n - 1) for j in range(i + 1, n)]

    def feeds(self, k: int) -> str:
        """What map ``k`` feeds in TFD: depth pairs (``k<-j``: target map j; ``i<-k``: target of map i) and its
        width-wise term."""
        tgt = [f"{k}<-{j}" for i, j in self.depth_pairs() if i == k]
        src = [f"{i}<-{k}" for i, j in self.depth_pairs() if j == k]
        c = self.taps[k].shape[0] if self.taps[k].shape else 0
        width = f"width {c // 2}<-{c // 2} ch" if c >= 2 else "width: skipped (C < 2)"
        depth = " ".join(tgt + src) if tgt or src else "no depth pair"
        return f"depth {depth}; {width}"

    def lines(self, tfd: bool = True) -> list[str]:
        """The plan as a table; ``tfd``: with the TFD terms each map feeds (a run whose method does not distil TFD's
        pairs shows the maps only)."""
        size = "x".join(str(d) for d in self.input_shape[1:]) if self.input_shape else "?"
        out = [f"tap plan for {self.model} on a {size} input: {len(self.taps)} maps, rule: {self.rule}"]
        out += [f"  note: {n}" for n in self.notes]
        rows = [("#", "module", "map (C,H,W)", "stride", "layout", "chosen by",
                 "TFD terms (a<-b: map b is the target of map a)" if tfd else "")]
        for k, t in enumerate(self.taps):
            rows.append((str(k), t.name, "x".join(str(d) for d in t.shape), t.stride, t.layout.describe(), t.rule,
                         self.feeds(k) if tfd else ""))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
        for r in rows:
            out.append(("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1]).rstrip())
        n = len(self.taps)
        if n >= 2 and tfd:
            same = len({t.shape[1:] for t in self.taps}) == 1
            out.append(f"  TFD depth-wise: {n * (n - 1) // 2} pairs, deeper map is the target (top_down), "
                       + ("all maps share one size: no pooling, channels cropped to the common count"
                          if same else "larger map pooled to the smaller, channels cropped to the common count"))
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())
