"""The DataLoader path: per-sample decoding + torchvision transforms in worker processes.

Workers decode to uint8 (PIL -> tensor, no float work), the batch is moved to the device with `non_blocking`
and normalised there. Order and augmentation are pure functions of (seed, epoch): a batch sampler in the main
process draws the global permutation from a generator seeded by (seed, epoch) and hands every sample a seed
derived from (seed, epoch, global position); the worker seeds its RNG with it (inside `fork_rng`, so the
caller's global RNG is untouched with `num_workers=0`). Results therefore do not depend on the number of
workers or ranks, and `persistent_workers` does not break resumption.

Paired batches (``paired=True``, see :data:`tfdistill.data.base.Batch`): the sampler draws every position's
same-class partner from a generator seeded by (seed, epoch, ``TAG_PAIR``) and gives the partner its own sample
seed; the partner half is appended to each batch.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import (TAG_ORDER, TAG_PAIR, TAG_PAIR_AUG, TAG_SAMPLE, Batch, ClassPartners, Loader, apply_cutout,
                   cutout_boxes, mix_seed)
from .sources import Split

_NO_BOX = torch.zeros(4, dtype=torch.long)


class SampleDataset(Dataset):
    """Maps a key `(index, sample_seed)` to `(uint8 image, target, index, cutout box)`."""

    def __init__(self, split: Split, transform: Any, cutout_size: int = 0) -> None:
        self.split = split
        self.transform = transform
        self.cutout_size = int(cutout_size)
        self.labels = split.labels.tolist()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int, torch.Tensor]:
        i, seed = key
        img = self.split.load(i)
        box = _NO_BOX
        if seed < 0:
            out = self.transform(img)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)  # CPU generator only (never the CUDA ones)
                out = self.transform(img)
                if self.cutout_size > 0:
                    h, w = out.shape[-2:]
                    c = torch.randint(0, h * w, (1,))
                    box = cutout_boxes(c // w, c % w, self.cutout_size, h, w)[0]
        return out.as_subclass(torch.Tensor), self.labels[i], i, box


class EpochBatchSampler(Sampler):
    """Yields, per step, this rank's keys `(index, sample_seed)` of the global batch (positions rank::ws)."""

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, train: bool, seed: int,
                 partners: Optional[ClassPartners] = None) -> None:
        self.n, self.gbs, self.rank, self.ws, self.train, self.seed = n, global_batch, rank, world_size, train, seed
        self.epoch = 0
        self.partners = partners if train else None
        """With partners: each batch's keys are followed by its same-class partners' keys (paired batches)."""

    def __len__(self) -> int:
        if self.train:
            return self.n // self.gbs
        full, rest = divmod(self.n, self.gbs)
        return full + (1 if rest > self.rank else 0)  # the short last batch may hold nothing for this rank

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        n, g = self.n, self.gbs
        if self.train:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, TAG_ORDER))
            perm_t = torch.randperm(n, generator=gen)
            perm = perm_t.tolist()
            stop = (n // g) * g
            if self.partners is not None:
                gp = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, TAG_PAIR))
                partner = self.partners.draw(perm_t, torch.rand(n, generator=gp)).tolist()
        else:
            perm = list(range(n))
            stop = n
        for start in range(0, stop, g):
            pos = range(start + self.rank, min(start + g, stop), self.ws)
            if self.train:
                keys = [(perm[q], mix_seed(self.seed, self.epoch, TAG_SAMPLE, q)) for q in pos]
                if self.partners is not None:
                    keys += [(partner[q], mix_seed(self.seed, self.epoch, TAG_SAMPLE + TAG_PAIR_AUG, q)) for q in pos]
            else:
                keys = [(perm[q], -1) for q in pos]
            if keys:
                yield keys


class TorchLoader(Loader):
    def __init__(
        self,
        dataset: SampleDataset,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        device: torch.device,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: tuple[str, ...] = (),
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        paired: bool = False,
    ) -> None:
        self.dataset = dataset
        self.paired = bool(paired) and bool(train)
        self._init_common(dataset_size=len(dataset), device=device, batch_size=batch_size, train=train, seed=seed,
                          mean=mean, std=std, augment=augment, rank=rank, world_size=world_size,
                          channels_last=channels_last)
        partners = ClassPartners(dataset.split.labels) if self.paired else None
        self.sampler = EpochBatchSampler(self.dataset_size, self._gbs, self.rank, self.world_size, self.train,
                                         self.seed, partners)
        self.num_workers = int(num_workers)
        self._loader: Optional[DataLoader] = None

    def _dataloader(self) -> DataLoader:
        if self._loader is None:
            nw = self.num_workers
            self._loader = DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                num_workers=nw,
                pin_memory=self.device.type == "cuda",
                persistent_workers=nw > 0,
                prefetch_factor=4 if nw > 0 else None,
                # its own generator: DataLoader otherwise draws worker base seeds from the global RNG (unused
                # here anyway: every sample is seeded from (seed, epoch, position))
                generator=torch.Generator().manual_seed(mix_seed(self.seed, 0xDA7A)),
            )
        return self._loader

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.epoch = self.epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        self.sampler.epoch = self.epoch
        cutout = "cutout" in self.augment
        for img, target, index, box in self._dataloader():
            x = self._norm(img.to(self.device, non_blocking=True))
            if cutout:
                apply_cutout(x, box.to(self.device, non_blocking=True))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.paired:  # the second half holds the partners: their targets and indices are not yielded
                half = target.shape[0] // 2
                target, index = target[:half], index[:half]
            yield x, target.to(self.device, non_blocking=True), index.to(self.device, non_blocking=True)
