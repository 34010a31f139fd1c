"""The device-resident loader: a whole split as a uint8 (N,3,H,W) tensor on the training device.

Each epoch draws, from generators seeded by (seed, epoch, stream tag), the global permutation and every
augmentation parameter for every global position at once; a batch is then a gather of the resident images at
its indices plus a few batched ops. Ranks draw the same numbers and keep positions `rank::world_size` of each
global batch, so the union of the ranks' step-k batches is the single-process batch k, augmentation included.
Nothing touches the global RNGs, and nothing in the per-batch hot path waits for the device.

Paired batches (``paired=True``, see :data:`tfdistill.data.base.Batch`): the partners of all global positions
are drawn once per epoch (stream ``TAG_PAIR``) and augmented with their own draws (every tag + ``TAG_PAIR_AUG``);
the partner half is appended to each batch.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from .augment import BatchedAutoAugment, crop_flip, resized_crop_flip, sample_rrc_boxes
from .base import (
    TAG_AA,
    TAG_CROP,
    TAG_CUTOUT,
    TAG_FLIP,
    TAG_ORDER,
    TAG_PAIR,
    TAG_PAIR_AUG,
    TAG_RRC,
    TAG_SCALE_CROP,
    Batch,
    ClassPartners,
    Loader,
    apply_cutout,
    cutout_boxes,
    make_generator,
    mix_seed,
)


def scale_crop(x: torch.Tensor, y: torch.Tensor, scales: torch.Tensor, corners: torch.Tensor,
               crop: tuple[int, int], ignore: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmentation's joint augmentation: each uint8 image (B,3,H,W) and its mask (B,H,W) scaled by ``scales[i]``
    (image bilinear, mask nearest), padded where smaller than ``crop`` (image 0, mask ``ignore``) and cropped to
    ``crop`` = (h, w) at ``corners[i]`` (fractions of the free range)."""
    ch, cw = crop
    xs = torch.empty(x.shape[0], x.shape[1], ch, cw, dtype=x.dtype, device=x.device)
    ys = torch.full((y.shape[0], ch, cw), ignore, dtype=y.dtype, device=y.device)
    h, w = x.shape[-2:]
    for i, (s, (u, v)) in enumerate(zip(scales.tolist(), corners.tolist())):
        sh, sw = max(1, round(h * s)), max(1, round(w * s))
        xi = torch.nn.functional.interpolate(x[i : i + 1].float(), size=(sh, sw), mode="bilinear",
                                             align_corners=False).round().clamp(0, 255).to(x.dtype)[0]
        yi = torch.nn.functional.interpolate(y[i : i + 1, None].float(), size=(sh, sw), mode="nearest")[0, 0]
        top, left = int(u * max(0, sh - ch)), int(v * max(0, sw - cw))
        xi, yi = xi[:, top : top + ch, left : left + cw], yi[top : top + ch, left : left + cw].to(y.dtype)
        xs[i].zero_()
        xs[i, :, : xi.shape[1], : xi.shape[2]] = xi
        ys[i, : yi.shape[0], : yi.shape[1]] = yi
    return xs, ys


class DeviceData:
    """One split resident on a device (shared by every loader over it, e.g. `train_loader_for`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> None:
        self.images = images.to(device, non_blocking=True).contiguous()
        self.labels = labels.to(device=device, dtype=torch.long, non_blocking=True)
        self.device = device

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class DeviceLoader(Loader):
    def __init__(
        self,
        data: DeviceData,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: tuple[str, ...] = (),
        cutout_size: int = 16,
        out_size: Optional[int] = None,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        paired: bool = False,
        crop_size: Optional[tuple[int, int]] = None,
        scale_range: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        self.data = data
        self.crop_size, self.scale_range = crop_size, (float(scale_range[0]), float(scale_range[1]))
        self.paired = bool(paired) and bool(train)
        self._partners = ClassPartners(data.labels) if self.paired else None
        self._init_common(dataset_size=len(data), device=data.device, batch_size=batch_size, train=train, seed=seed,
                          mean=mean, std=std, augment=augment, rank=rank, world_size=world_size,
                          channels_last=channels_last)
        self.cutout_size = int(cutout_size)
        _, _, self.h, self.w = data.images.shape
        self.out_size = int(out_size or self.h)
        self._aa = BatchedAutoAugment(self.h, self.w) if "autoaugment" in self.augment else None

    def __len__(self) -> int:
        return self._num_batches()

    # ----------------------------------------------------------------------------------------------------
    def _epoch_params(self, tag_offset: int = 0) -> dict[str, torch.Tensor]:
        """Everything random about this epoch, indexed by global position (identical on every rank). With a
        ``tag_offset``: only the augmentation draws, from streams of their own (the partners' of paired batches)."""
        n, dev, e, s = self.dataset_size, self.device, self.epoch, self.seed
        p: dict[str, torch.Tensor] = {}

        def gen(tag: int) -> torch.Generator:
            return make_generator(dev, mix_seed(s, e, tag + tag_offset))

        if not tag_offset:
            g = gen(TAG_ORDER)
            p["perm"] = torch.randperm(n, generator=g, device=g.device).to(dev)
        if "crop" in self.augment:
            g = gen(TAG_CROP)
            p["offsets"] = torch.randint(0, 9, (n, 2), generator=g, device=g.device).to(dev)
        if "rrc" in self.augment:
            p["boxes"] = sample_rrc_boxes(n, self.h, self.w, gen(TAG_RRC), dev)
        if "scale_crop" in self.augment:
            g = gen(TAG_SCALE_CROP)
            lo, hi = self.scale_range
            p["scales"] = (lo + (hi - lo) * torch.rand(n, generator=g, device=g.device)).to(dev)
            p["corners"] = torch.rand(n, 2, generator=g, device=g.device).to(dev)  # crop offsets, as fractions
        if "flip" in self.augment:
            g = gen(TAG_FLIP)
            p["flips"] = (torch.rand(n, generator=g, device=g.device) < 0.5).to(dev)
        if "cutout" in self.augment:
            g = gen(TAG_CUTOUT)
            cy = torch.randint(0, self.out_size, (n,), generator=g, device=g.device)
            cx = torch.randint(0, self.out_size, (n,), generator=g, device=g.device)
            p["cutout"] = cutout_boxes(cy, cx, self.cutout_size, self.out_size, self.out_size).to(dev)
        return p

    def _aa_plan(self, nb: int, gbs: int, tag_offset: int = 0) -> tuple[torch.Tensor, list]:
        """Host-side AutoAugment draws for the epoch, grouped per (rank-local) batch; one upload per epoch."""
        assert self._aa is not None
        cpu = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, TAG_AA + tag_offset))
        keys = self._aa.sample(self.dataset_size, cpu)
        orders, groups = [], []
        for k in range(nb):
            pos = torch.arange(k * gbs + self.rank, (k + 1) * gbs, self.world_size)
            order, g = self._aa.plan(keys[pos])
            orders.append(order)
            groups.append(g)
        allo = torch.stack(orders) if orders else torch.zeros(0, 2, 0, dtype=torch.long)
        if self.device.type == "cuda":
            allo = allo.pin_memory()
        return allo.to(self.device, non_blocking=True), groups

    def __iter__(self) -> Iterator[Batch]:
        if self.train:
            yield from self._iter_train()
        else:
            yield from self._iter_eval()

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = self._norm(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _augment(self, x: torch.Tensor, p: dict[str, torch.Tensor], sl: slice, aa: Optional[tuple], k: int
                 ) -> torch.Tensor:
        """The uint8 images ``x`` of global positions ``sl``, augmented with the draws ``p`` and normalised."""
        if aa is not None:
            x = self._aa.apply(x, aa[0][k], aa[1][k])  # type: ignore[union-attr]
        flips = p["flips"][sl] if "flips" in p else None
        if "boxes" in p:
            x = resized_crop_flip(x, p["boxes"][sl], flips, self.out_size)
        elif "offsets" in p or flips is not None:
            x = crop_flip(x, p["offsets"][sl] if "offsets" in p else None, flips)
        x = self._norm(x)
        if "cutout" in p:
            apply_cutout(x, p["cutout"][sl])
        return x

    def _iter_train(self) -> Iterator[Batch]:
        gbs, r, ws = self._gbs, self.rank, self.world_size
        nb = len(self)
        p = self._epoch_params()
        aa = self._aa_plan(nb, gbs) if self._aa is not None else None
        if self._partners is not None:
            g = make_generator(self.device, mix_seed(self.seed, self.epoch, TAG_PAIR))
            u = torch.rand(self.dataset_size, generator=g, device=g.device).to(self.device)
            partners = self._partners.draw(p["perm"], u)  # by global position
            p2 = self._epoch_params(TAG_PAIR_AUG)
            aa2 = self._aa_plan(nb, gbs, TAG_PAIR_AUG) if self._aa is not None else None
        images, labels = self.data.images, self.data.labels
        for k in range(nb):
            sl = slice(k * gbs + r, (k + 1) * gbs, ws)
            idx = p["perm"][sl]
            x, y = images.index_select(0, idx), labels.index_select(0, idx)
            if "scales" in p:  # segmentation: image and mask scaled and cropped together
                x, y = scale_crop(x, y, p["scales"][sl], p["corners"][sl], self.crop_size or (self.h, self.w))
            x = self._augment(x, p, sl, aa, k)
            if self._partners is not None:
                x2 = self._augment(images.index_select(0, partners[sl]), p2, sl, aa2, k)
                x = torch.cat([x, x2])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if y.dim() == 3 and "flips" in p:  # masks (segmentation) flip with their images
                y = torch.where(p["flips"][sl].view(-1, 1, 1), y.flip(-1), y)
            yield x, y, idx

    def _iter_eval(self) -> Iterator[Batch]:
        n, gbs, r, ws = self.dataset_size, self._gbs, self.rank, self.world_size
        images, labels = self.data.images, self.data.labels
        for start in range(0, n, gbs):
            end = min(start + gbs, n)
            if start + r >= end:
                continue
            idx = torch.arange(start + r, end, ws, device=self.device)
            yield self._finish(images.index_select(0, idx)), labels.index_select(0, idx), idx
