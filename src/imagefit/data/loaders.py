"""Loaders: uint8 pixels (cached array or streamed files) -> device -> augment -> normalise.

Both paths share everything after the pixels: the batch order is a permutation seeded by
(seed, epoch), each batch's augmentation by (seed, epoch, batch). A loader can therefore start
an epoch at any batch and produce exactly what an uninterrupted run saw there, which is what
makes mid-epoch resume exact.
"""

from __future__ import annotations

import logging
import signal
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imagefit.config import Config, DataConfig, check_task
from imagefit.data.augment import BatchAugment
from imagefit.data.balance import balanced_sample_weights
from imagefit.data.cache import CacheUnavailable, decode_cached, decoded_bytes
from imagefit.data.disk import DiskArraySource
from imagefit.data.folder import Sample
from imagefit.data.preprocessing import Preprocessing, resolve_preprocessing
from imagefit.data.sources import resolve_data
from imagefit.data.splits import SplitManifest
from imagefit.data.store import Box, PixelSpec
from imagefit.errors import DataError

log = logging.getLogger(__name__)

# pixels (B, S, S, 3) uint8, labels (B,) int64, and from a training store (data.store) each
# image's valid (width, height) on its canvas, (B, 2) int64
Batch = tuple[torch.Tensor, ...]


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (SeedSequence avoids seed+epoch collisions)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> 1)


class PixelSource(Protocol):
    def __len__(self) -> int: ...

    def batches(self, index_batches: Sequence[np.ndarray]) -> Iterator[Batch]: ...


class ArraySource:
    """Pixels already decoded into one array (the fast path)."""

    def __init__(
        self,
        pixels: np.ndarray | torch.Tensor,
        labels: Sequence[int],
        device: torch.device,
        boxes: np.ndarray | None = None,
    ):
        """``boxes`` (N, 2): valid (width, height) per image when ``pixels`` is a store."""
        if isinstance(pixels, np.ndarray):
            with warnings.catch_warnings():
                # A memory-mapped cache is read-only; it is only ever read, so sharing is safe.
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                pixels = torch.as_tensor(pixels)
        # On an accelerator, keep the whole dataset there: batches are then gathered on-device.
        self.pixels = pixels.to(device) if device.type != "cpu" else pixels
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64, device=self.pixels.device)
        self.boxes = None
        if boxes is not None:
            self.boxes = torch.as_tensor(boxes, dtype=torch.int64, device=self.pixels.device)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, index_batches: Sequence[np.ndarray]) -> Iterator[Batch]:
        for indices in index_batches:
            index = torch.as_tensor(indices, device=self.pixels.device)
            if self.boxes is None:
                yield self.pixels[index], self.labels[index]
            else:
                yield self.pixels[index], self.labels[index], self.boxes[index]


class _FileDataset(Dataset):
    def __init__(self, samples: Sequence[Sample], spec: PixelSpec, min_size: int, skip_bad: bool):
        self.samples, self.spec, self.min_size, self.skip_bad = samples, spec, min_size, skip_bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, Box] | None:
        path, label = self.samples[index]
        try:
            pixels, box = self.spec.decode(path, self.min_size)
        except DataError as exc:
            if not self.skip_bad:
                raise
            log.warning("skipped bad image: %s", exc)
            return None
        return pixels, label, box


class _Collate:
    """Decoded items -> one batch; a store's batches carry the valid boxes (picklable for
    DataLoader workers)."""

    def __init__(self, store: bool):
        self.store = store

    def __call__(self, items: list[tuple[np.ndarray, int, Box] | None]) -> Batch:
        kept = [item for item in items if item is not None]
        boxes = torch.tensor([box for _, _, box in kept], dtype=torch.int64).view(-1, 2)
        if not kept:
            empty = torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
            return (*empty, boxes) if self.store else empty
        pixels = torch.from_numpy(np.stack([pixels for pixels, _, _ in kept]))
        labels = torch.tensor([label for _, label, _ in kept], dtype=torch.int64)
        return (pixels, labels, boxes) if self.store else (pixels, labels)


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process.

    Ctrl-C, ``kill -TERM -<pgid>`` and schedulers such as SLURM signal the whole process
    group. A worker that died of it made the main process crash with "DataLoader worker ...
    is killed by signal" instead of finishing its step and saving; the main process shuts
    its workers down itself, and they exit on their own when it is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StreamSource:
    """Files decoded on the fly by DataLoader workers (datasets too big to cache)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        size: int,
        min_size: int,
        skip_bad: bool,
        workers: int,
        pin_memory: bool,
        decoder: str = "pillow",
        spec: PixelSpec | None = None,
    ):
        """``spec``: what each file becomes (default: the evaluation crop at ``size``)."""
        self.spec = spec or PixelSpec(size, decoder=decoder)
        self.dataset = _FileDataset(samples, self.spec, min_size, skip_bad)
        self.workers, self.pin_memory = workers, pin_memory

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, index_batches: Sequence[np.ndarray]) -> Iterator[Batch]:
        # A DataLoader draws its workers' base seed from the generator it is given, else from
        # the global torch RNG: that draw shifted every later dropout mask, so streaming runs
        # differed from cached ones and a resumed epoch from an uninterrupted one. Decoding is
        # deterministic, so a private, fixed generator changes nothing else.
        loader = DataLoader(
            self.dataset,
            batch_sampler=[b.tolist() for b in index_batches],
            num_workers=self.workers,
            collate_fn=_Collate(self.spec.store),
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=_ignore_stop_signals if self.workers else None,
        )
        yield from loader


class Loader:
    """One split's batches for one epoch, normalised float on ``device``."""

    def __init__(
        self,
        source: PixelSource,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool = False,
        augment: BatchAugment | None = None,
        seed: int = 0,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        limit: int | None = None,
        weights: np.ndarray | None = None,
        shard: tuple[int, int] = (0, 1),
    ):
        """``weights`` (n,) probabilities: with ``shuffle``, draw each epoch by them instead
        of permuting (e.g. :func:`imagefit.data.balance.balanced_sample_weights`).

        ``shard`` (rank, world size), distributed training: with ``shuffle`` this rank takes
        its slice of every global batch of ``world x batch_size``; without, a contiguous
        ``1/world`` of the samples (no padding: gathering the shards in rank order restores
        the sample order)."""
        self.source, self.batch_size, self.device = source, batch_size, device
        self.shuffle, self.augment, self.seed, self.limit = shuffle, augment, seed, limit
        self.weights, self.shard = weights, shard
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255

    @property
    def num_samples(self) -> int:
        return len(self.source)

    def __len__(self) -> int:
        count, (rank, world) = len(self.source), self.shard
        if world > 1 and self.shuffle:
            # A last global batch too small to give every rank a sample is left out.
            full, rest = divmod(count, self.batch_size * world)
            full += rest >= world
        else:
            mine = count // world + (rank < count % world)  # np.array_split's shard sizes
            full = -(-mine // self.batch_size)
        return min(full, self.limit) if self.limit else full

    def index_batches(self, epoch: int) -> list[np.ndarray]:
        count = len(self.source)
        if self.shuffle and self.weights is not None:
            # Weighted draw with replacement, same epoch length: a pure function of (seed,
            # epoch) like the permutation, so a resumed epoch sees the same batches.
            rng = np.random.default_rng(derive_seed(self.seed, epoch))
            order = rng.choice(count, size=count, replace=True, p=self.weights)
        elif self.shuffle:
            order = np.random.default_rng(derive_seed(self.seed, epoch)).permutation(count)
        else:
            order = np.arange(count)
        rank, world = self.shard
        if world > 1 and self.shuffle:
            step = self.batch_size * world
            batches = [
                np.array_split(order[i : i + step], world)[rank] for i in range(0, count, step)
            ]
        else:
            mine = np.array_split(order, world)[rank]
            batches = [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        return batches[: len(self)]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start..`` of ``epoch``: images (B, 3, S, S) float, targets (B,) or (B, K)."""
        batches = self.index_batches(epoch)[start:]
        set_epoch = getattr(self.source, "set_epoch", None)
        if set_epoch is not None:  # a source that renders new images each epoch
            set_epoch(epoch)
        yield from self.prepare(self.source.batches(batches), epoch, start)

    def prepare(
        self, batches: Iterator[Batch], epoch: int, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """uint8 batches ``start..`` of ``epoch`` -> device, augmented (training), normalised.

        A batch may carry a third tensor: each image's valid box in the store (training crops
        are drawn from it)."""
        for offset, (pixels, labels, *boxes) in enumerate(batches):
            if len(labels) == 0:
                continue  # every file of this batch was a skipped bad image
            pixels = pixels.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            x = pixels.permute(0, 3, 1, 2).float()  # (B, 3, S, S), channels_last strides
            if self.augment is not None:
                # Each rank draws its own augmentation for its shard of the global batch.
                parts = (self.shard[0],) if self.shard[1] > 1 else ()
                generator = torch.Generator().manual_seed(
                    derive_seed(self.seed, epoch, start + offset, *parts)
                )
                x, targets = self.augment(
                    x.div_(255.0), labels, generator, boxes[0] if boxes else None
                )
                # (x * 255 - mean) / std in one pass: training batches only, so evaluation
                # keeps the arithmetic that export.preprocess.normalise mirrors bit for bit.
                yield torch.addcmul(-self.mean / self.std, x, 255.0 / self.std), targets
            else:
                yield (x - self.mean) / self.std, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)


@dataclass
class DataBundle:
    """Everything training needs from the data side."""

    classes: list[str]
    manifest: SplitManifest
    train: Loader
    val: Loader | None  # None: data.val_fraction=0, no validation
    test: Loader | None
    cached: bool
    skipped: dict[str, str] = field(default_factory=dict)  # file -> reason
    preprocessing: Preprocessing | None = None  # what the loaders use, and why


def _read_skip_list(path: str) -> set[Path]:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data.skip_list: file not found: {file}")
    lines = file.read_text(encoding="utf-8").splitlines()
    return {
        Path(line.strip()).resolve() for line in lines if line.strip() and not line.startswith("#")
    }


def load_manifest(cfg: Config) -> SplitManifest:
    """The split of ``cfg.data`` (a saved manifest, a label file or folders: data.sources)."""
    return resolve_data(cfg.data).manifest


def _apply_skip_list(manifest: SplitManifest, path: str, skipped: dict[str, str]) -> None:
    listed = _read_skip_list(path)
    for name, items in manifest.splits.items():
        kept = [s for s in items if s[0].resolve() not in listed]
        for p, _ in set(items) - set(kept):
            skipped[str(p)] = f"listed in {path}"
        manifest.splits[name] = kept
    log.info("skip list %s: left out %d files", path, len(skipped))


def over_budget(d: DataConfig, count: int, size: int, extra_bytes: int = 0) -> bool:
    """Whether ``count`` decoded images of ``size`` px (plus ``extra_bytes`` of other
    splits' pixels) exceed ``data.memory_budget_mb``."""
    return decoded_bytes(count, size) + extra_bytes > d.memory_budget_mb * 2**20


def eval_spec(d: DataConfig, size: int) -> PixelSpec:
    """The evaluation pixels ``d`` sets (unset crop_pct/interpolation: 1.0, bilinear)."""
    return PixelSpec(size, d.crop_pct or 1.0, d.interpolation or "bilinear", d.decoder)


def make_source(
    d: DataConfig,
    samples: list[Sample],
    size: int,
    device: torch.device,
    skipped: dict[str, str],
    *,
    budget_count: int | None = None,
    spec: PixelSpec | None = None,
    budget_bytes: int | None = None,
) -> tuple[PixelSource, list[Sample]]:
    """A pixel source for ``samples`` and the samples it really holds (bad files skipped).

    ``data.cache=never`` streams the files through DataLoader workers. Otherwise they are
    decoded once into the image cache, whatever the dataset's size: cached pixels within
    ``data.memory_budget_mb`` are held in memory (:class:`ArraySource`);
    over it, or with ``data.cache=mmap``, each batch reads its rows from the cache file
    (:class:`DiskArraySource`). ``budget_count``: the images weighed against the budget
    (default ``len(samples)``; :func:`build_data` passes all splits', which share the budget),
    or ``budget_bytes`` their decoded bytes. ``spec``: what each file becomes (default
    :func:`eval_spec`); a training store's source yields each image's valid box too.
    """
    spec = spec or eval_spec(d, size)
    if d.cache == "never":
        return _stream(d, samples, spec, device), samples
    if budget_bytes is not None:
        big = budget_bytes > d.memory_budget_mb * 2**20
    else:
        big = over_budget(d, len(samples) if budget_count is None else budget_count, spec.size)
    try:
        # Over the budget, decoding into memory (a read-only cache folder) would need the
        # very RAM the budget rules out: stream instead, unless the cache was insisted on.
        decoded = decode_cached(
            samples,
            size,
            d.min_size,
            d.on_bad,
            d.cache_dir,
            memory_fallback=not big or d.cache != "auto",
            spec=spec,
        )
    except CacheUnavailable as exc:
        log.warning(
            "%s; streaming %d images from files (over data.memory_budget_mb)", exc, len(samples)
        )
        return _stream(d, samples, spec, device), samples
    for position, reason in decoded.bad.items():
        skipped[str(samples[position][0])] = reason
        log.warning("skipped bad image: %s", reason)
    kept = [samples[i] for i in decoded.keep]
    labels = [label for _, label in kept]
    if (d.cache == "mmap" or big) and isinstance(decoded.pixels, np.memmap):
        log.info(
            "%d images read from the cache file per batch (%s)",
            len(kept),
            "data.cache=mmap" if d.cache == "mmap" else "over data.memory_budget_mb",
        )
        return DiskArraySource(decoded.pixels, labels, device, boxes=decoded.boxes), kept
    return ArraySource(decoded.pixels, labels, device, boxes=decoded.boxes), kept


def hf_source(
    d: DataConfig, samples: list[Sample], spec: PixelSpec, device: torch.device, budget_bytes: int
) -> PixelSource:
    """Rows of ``data.hf``: decoded once into memory within the budget, else per batch.

    The dataset's own Arrow files are already a memory-mapped cache of the encoded images, so
    imagefit's image cache (keyed by file) is not used for it. ``spec``: the store (training)
    or the evaluation crop, as for files.
    """
    from imagefit.data.hf import HFSource

    rows = HFSource(d, samples, spec)
    if d.cache == "never" or budget_bytes > d.memory_budget_mb * 2**20:
        return rows
    pixels, boxes = rows.decode_all()
    return ArraySource(pixels, rows.labels, device, boxes=boxes)


def _stream(
    d: DataConfig, samples: list[Sample], spec: PixelSpec, device: torch.device
) -> StreamSource:
    return StreamSource(
        samples,
        spec.size,
        d.min_size,
        d.on_bad == "skip",
        d.num_workers,
        device.type == "cuda",
        spec=spec,
    )


def split_loader(
    cfg: Config,
    name: str,
    source: PixelSource,
    classes: int,
    pre: Preprocessing,
    device: torch.device,
    batch_size: int | None = None,
    shard: tuple[int, int] = (0, 1),
    weights: np.ndarray | None = None,
) -> Loader:
    """The loader of split ``name`` over ``source``: train shuffles and (with data.augment)
    augments, at ``batch_size`` (default train.batch_size); the others evaluate in order at
    train.eval_batch_size. Every data source builds its loaders here."""
    d, t = cfg.data, cfg.train
    train = name == "train"
    augment = None
    if train and d.augment:
        augment = BatchAugment(cfg.augment, d.image_size, classes, mean=pre.mean, std=pre.std)
    size = (batch_size or t.batch_size) if train else (t.eval_batch_size or t.batch_size)
    return Loader(
        source,
        size,
        device,
        shuffle=train,
        augment=augment,
        seed=t.seed,
        mean=pre.mean,
        std=pre.std,
        limit=t.limit_batches,
        weights=weights,
        shard=shard,
    )


def build_data(
    cfg: Config,
    device: torch.device,
    *,
    batch_size: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> DataBundle:
    """Resolve the splits of ``cfg.data`` and build the train/val/test loaders.

    ``shard`` (rank, world size): this process's part of every split (distributed training).
    """
    d = cfg.data
    if d.shards:  # no files, no random access: streamed loaders of their own
        from imagefit.data.stream import build_shard_data

        return build_shard_data(cfg, device, batch_size=batch_size, shard=shard)
    check_task(cfg)
    resolved = resolve_data(d)
    manifest, skipped = resolved.manifest, dict(resolved.skipped)
    if d.skip_list:
        _apply_skip_list(manifest, d.skip_list, skipped)
    pre = resolve_preprocessing(cfg)
    evaluation = PixelSpec(d.image_size, pre.crop_pct, pre.interpolation, d.decoder)
    # Training samples its crops from the whole image (the store); with augmentation off it
    # sees the evaluation pixels.
    store = PixelSpec(pre.store_size, 1.0, pre.interpolation, d.decoder, store=True)
    specs = {
        name: store if name == "train" and d.augment else evaluation for name in manifest.splits
    }
    # every split's pixels share the budget
    total = sum(decoded_bytes(len(v), specs[k].size) for k, v in manifest.splits.items())
    cache = d.cache != "never"
    where = "streamed from files"
    if d.hf:
        cache, where = False, "decoded from a Hugging Face dataset"
    elif cache:
        big = d.cache == "mmap" or total > d.memory_budget_mb * 2**20
        where = "decoded once into the image cache, " + ("read per batch" if big else "in memory")
    log.info(
        "data: %s, %d classes, %s images, %s",
        manifest.root,
        len(manifest.classes),
        {k: len(v) for k, v in manifest.splits.items()},
        where,
    )
    log.info(
        "preprocessing: crop_pct %s, %s, mean %s, std %s, training store %d px (%s)",
        pre.crop_pct,
        pre.interpolation,
        pre.mean,
        pre.std,
        pre.store_size,
        ", ".join(f"{k}: {v}" for k, v in pre.why.items()),
    )
    loaders: dict[str, Loader] = {}
    for name, items in manifest.splits.items():
        if not items:
            continue
        if d.hf:
            source, kept = hf_source(d, items, specs[name], device, total), items
        else:
            source, kept = make_source(
                d, items, d.image_size, device, skipped, spec=specs[name], budget_bytes=total
            )
        manifest.splits[name] = kept
        weights = None
        if name == "train" and d.sampler == "balanced":
            weights = balanced_sample_weights([label for _, label in kept], manifest.classes)
        loaders[name] = split_loader(
            cfg, name, source, len(manifest.classes), pre, device, batch_size, shard, weights
        )
    return DataBundle(
        manifest.classes,
        manifest,
        loaders["train"],
        loaders.get("val"),
        loaders.get("test"),
        cache,
        skipped,
        pre,
    )
