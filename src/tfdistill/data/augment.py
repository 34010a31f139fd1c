"""Augmentations.

Batched, on-device versions (device loader): every op takes a whole batch plus per-sample parameters drawn
up front, and runs as a handful of tensor ops (no Python loop over samples):

* `crop_flip`: reflect-pad `pad` + crop back at per-sample offsets in [0, 2*pad], then optional horizontal
  flip; done as ONE gather with reflected indices (the padded image is never materialised).
* `resized_crop_flip`: RandomResizedCrop (torchvision's scale/ratio sampling, 10 tries, centre fallback) +
  flip, as a per-sample affine `grid_sample` (bilinear, no antialiasing).
* cutout: `base.cutout_boxes` / `base.apply_cutout` (after normalisation, so the hole is exactly 0 = the mean).
* `BatchedAutoAugment`: torchvision's AutoAugment CIFAR10 policy, per sample. Samples are grouped by the op
  they drew at each of the policy's two stages; each group is transformed by one batched
  `torchvision.transforms.v2.functional` call. The draws are made on the host for a whole epoch and the
  grouping is uploaded once, so the hot path never waits on the device.

Per-sample PIL/tensor transforms for the DataLoader path: `train_transform` / `eval_transform`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as TF


# ------------------------------------------------------------------------------------------- crop + flip
def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    m = torch.remainder(i, period)
    return torch.where(m < n, m, period - m)


def crop_flip(
    x: torch.Tensor, offsets: torch.Tensor | None, flips: torch.Tensor | None, pad: int = 4
) -> torch.Tensor:
    """x (B,C,H,W) any dtype; offsets (B,2) int in [0, 2*pad] = (dy, dx) into the reflect-padded image;
    flips (B,) bool. Returns a new (B,C,H,W) tensor of the same dtype."""
    b, c, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev).expand(b, h)
    cols = torch.arange(w, device=dev).expand(b, w)
    if offsets is not None:
        rows = _reflect(rows + (offsets[:, :1] - pad), h)
        cols = _reflect(cols + (offsets[:, 1:] - pad), w)
    if flips is not None:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    flat = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, flat).reshape(b, c, h, w)


# ------------------------------------------------------------------------------------------- resized crop
def sample_rrc_boxes(
    n: int, h: int, w: int, gen: torch.Generator, device: torch.device,
    scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10,
) -> torch.Tensor:
    """Per-sample (top, left, height, width) float boxes following torchvision's RandomResizedCrop."""
    gdev = gen.device
    area = float(h * w)
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=gen, device=gdev))
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(lr[0] + (lr[1] - lr[0]) * torch.rand(n, tries, generator=gen, device=gdev))
    cw = torch.sqrt(target * aspect).round()
    ch = torch.sqrt(target / aspect).round()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=gdev))
    u = torch.rand(n, 2, generator=gen, device=gdev)
    sel = first.clamp_min(0)[:, None]
    bw, bh = cw.gather(1, sel)[:, 0], ch.gather(1, sel)[:, 0]
    top = torch.floor(u[:, 0] * (h - bh + 1))
    left = torch.floor(u[:, 1] * (w - bw + 1))
    # fallback: centre crop of the whole image, aspect clamped to `ratio`
    in_ratio = w / h
    if in_ratio < ratio[0]:
        fw, fh = float(w), float(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        fh, fw = float(h), float(round(h * ratio[1]))
    else:
        fw, fh = float(w), float(h)
    fb = first < 0
    bw = torch.where(fb, torch.full_like(bw, fw), bw)
    bh = torch.where(fb, torch.full_like(bh, fh), bh)
    top = torch.where(fb, torch.full_like(top, float((h - int(fh)) // 2)), top)
    left = torch.where(fb, torch.full_like(left, float((w - int(fw)) // 2)), left)
    return torch.stack([top, left, bh, bw], 1).to(device)


def resized_crop_flip(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor | None, size: int) -> torch.Tensor:
    """Crop each sample to its (top, left, height, width) box and resize to size x size (bilinear) with one
    affine grid_sample; optional horizontal flip. Returns float32 in the input's 0..255 range."""
    b, c, h, w = x.shape
    top, left, bh, bw = boxes.to(torch.float32).unbind(1)
    sx = bw / w
    if flips is not None:
        sx = torch.where(flips, -sx, sx)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + bw) / w - 1
    theta[:, 1, 1] = bh / h
    theta[:, 1, 2] = (2 * top + bh) / h - 1
    grid = TF.affine_grid(theta, [b, c, size, size], align_corners=False)
    return TF.grid_sample(x.to(torch.float32), grid, mode="bilinear", padding_mode="border", align_corners=False)


# ------------------------------------------------------------------------------------------- AutoAugment
@dataclass(frozen=True)
class AAOp:
    name: str
    magnitude: float


def apply_aa_op(x: torch.Tensor, op: AAOp) -> torch.Tensor:
    """One AutoAugment op (torchvision semantics: nearest interpolation, fill 0) on a uint8 batch."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    nearest = InterpolationMode.NEAREST
    name, mag = op.name, op.magnitude
    if name == "ShearX":
        return F.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(mag)), 0.0],
                        interpolation=nearest, fill=None, center=[0, 0])
    if name == "ShearY":
        return F.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, math.degrees(math.atan(mag))],
                        interpolation=nearest, fill=None, center=[0, 0])
    if name == "TranslateX":
        return F.affine(x, angle=0.0, translate=[int(mag), 0], scale=1.0, shear=[0.0, 0.0],
                        interpolation=nearest, fill=None)
    if name == "TranslateY":
        return F.affine(x, angle=0.0, translate=[0, int(mag)], scale=1.0, shear=[0.0, 0.0],
                        interpolation=nearest, fill=None)
    if name == "Rotate":
        return F.rotate(x, mag, interpolation=nearest, fill=None)
    if name == "Brightness":
        return F.adjust_brightness(x, 1.0 + mag)
    if name == "Color":
        return F.adjust_saturation(x, 1.0 + mag)
    if name == "Contrast":
        return F.adjust_contrast(x, 1.0 + mag)
    if name == "Sharpness":
        return F.adjust_sharpness(x, 1.0 + mag)
    if name == "Posterize":
        return F.posterize(x, int(mag))
    if name == "Solarize":
        return F.solarize(x, mag)
    if name == "AutoContrast":
        return F.autocontrast(x)
    if name == "Equalize":
        return F.equalize(x)
    if name == "Invert":
        return F.invert(x)
    if name == "Identity":
        return x
    raise ValueError(f"unknown AutoAugment op {name!r}")


class BatchedAutoAugment:
    """torchvision's AutoAugment (CIFAR10 policy by default), drawn per sample, applied per group.

    For each sample: a sub-policy uniformly, then for each of its two ops a coin `rand <= p` and a sign
    (signed magnitudes are negated when the sign is 0) -- the same distribution as torchvision's transform.
    """

    def __init__(self, height: int, width: int, policy: str = "cifar10") -> None:
        from torchvision.transforms import AutoAugment, AutoAugmentPolicy

        ref = AutoAugment(AutoAugmentPolicy(policy))
        space = ref._augmentation_space(10, (height, width))
        self.ops: list[AAOp] = []
        index: dict[AAOp, int] = {}
        npol = len(ref.policies)
        key = np.zeros((npol, 2, 2), dtype=np.int64)  # [policy, stage, sign] -> op id
        prob = np.zeros((npol, 2), dtype=np.float64)
        for p, sub in enumerate(ref.policies):
            for i, (name, pr, mag_id) in enumerate(sub):
                prob[p, i] = pr
                mags, signed = space[name]
                mag = float(mags[mag_id].item()) if mag_id is not None else 0.0
                for s in (0, 1):
                    op = AAOp(name, -mag if (signed and s == 0) else mag)
                    if op not in index:
                        index[op] = len(self.ops)
                        self.ops.append(op)
                    key[p, i, s] = index[op]
        self.num_policies = npol
        self._key = torch.from_numpy(key)
        self._prob = torch.from_numpy(prob)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, 2) int64 op ids per sample and stage on the CPU; -1 = the op's coin said no."""
        pol = torch.randint(self.num_policies, (n,), generator=gen)
        coins = torch.rand(n, 2, generator=gen, dtype=torch.float64)
        signs = torch.randint(2, (n, 2), generator=gen)
        stage = torch.arange(2).expand(n, 2)
        ids = self._key[pol[:, None], stage, signs]
        return torch.where(coins <= self._prob[pol], ids, torch.full_like(ids, -1))

    @staticmethod
    def plan(keys: torch.Tensor) -> tuple[torch.Tensor, list[list[tuple[int, int, int]]]]:
        """Group a batch: keys (b, 2) -> (order (2, b): sample positions sorted by op id per stage,
        groups[stage] = [(op id, start, end)] into that order, skipping the no-op group)."""
        orders, groups = [], []
        for st in range(keys.shape[1]):
            k = keys[:, st]
            order = torch.argsort(k, stable=True)
            counts = torch.bincount(k + 1, minlength=1).tolist()
            g, start = [], counts[0]
            for op_id, cnt in enumerate(counts[1:]):
                if cnt:
                    g.append((op_id, start, start + cnt))
                    start += cnt
            orders.append(order)
            groups.append(g)
        return torch.stack(orders), groups

    def apply(self, x: torch.Tensor, order: torch.Tensor, groups: list[list[tuple[int, int, int]]]) -> torch.Tensor:
        """x uint8 (b,C,H,W) (modified in place and returned); order (2, b) on x's device."""
        for st, g in enumerate(groups):
            for op_id, s, e in g:
                idx = order[st, s:e]
                x.index_copy_(0, idx, apply_aa_op(x.index_select(0, idx), self.ops[op_id]))
        return x


# ------------------------------------------------------------------------------------------- DataLoader path
class EnsureSize:
    """Resize (shorter side, antialiased) + centre crop to size x size unless the image already is that size."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img):  # PIL image or uint8 tensor
        from torchvision.transforms.v2 import functional as F

        h, w = F.get_size(img)
        if (h, w) == (self.size, self.size):
            return img
        img = F.resize(img, self.size, antialias=True)
        return F.center_crop(img, [self.size, self.size])


def train_transform(augment: tuple[str, ...], size: int, small: bool):
    """Per-sample training transform (PIL or uint8 tensor in, uint8 tensor out); cutout is done on the device."""
    from torchvision.transforms import v2

    ops: list = []
    if small:
        ops.append(EnsureSize(size))
    elif "rrc" not in augment:
        ops += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    if "autoaugment" in augment:
        ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    if "rrc" in augment:
        ops.append(v2.RandomResizedCrop(size, antialias=True))
    if "crop" in augment:
        ops.append(v2.RandomCrop(size, padding=4, padding_mode="reflect"))
    if "flip" in augment:
        ops.append(v2.RandomHorizontalFlip())
    ops.append(v2.ToImage())
    return v2.Compose(ops)


def eval_transform(size: int, small: bool):
    """Small (CIFAR-like) data: the image as is (resized only if it is not size x size). Large: ImageNet's
    Resize(size * 256/224) + CenterCrop(size)."""
    from torchvision.transforms import v2

    if small:
        ops = [EnsureSize(size)]
    else:
        ops = [v2.Resize(int(size * 256 / 224), antialias=True), v2.CenterCrop(size)]
    return v2.Compose([*ops, v2.ToImage()])
