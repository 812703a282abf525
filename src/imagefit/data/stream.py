"""Training from WebDataset tar shards (``data.shards``): data larger than a disk, streamed.

Each epoch, the shards of a split are put in an order seeded by (seed, epoch) and dealt to the
torchrun processes, then within a process to its DataLoader workers, each shard to the one
holding the fewest samples so far (the index knows every shard's count). A worker reads its
shards in turn through ``fsspec`` and the ``webdataset`` tar reader, shuffles them in a buffer
of ``data.shuffle_buffer`` samples (seeded per epoch, process and worker), decodes and sends
chunks of :data:`CHUNK` images; the DataLoader takes the workers' chunks in turn.

What holds (``tests/test_shards.py``):

- every sample of the split is seen exactly once per epoch, across processes and workers;
- every process takes the same number of steps (DDP needs it): a process dealt fewer samples
  makes its batches slightly smaller instead of repeating or dropping any;
- the stream is a pure function of (seed, epoch, processes, workers), so a resume mid-epoch
  continues with exactly the batches an uninterrupted run would have trained on. The reader
  skips, without decoding, what each worker had sent before the last complete round of chunks,
  and decodes and drops at most one round (``workers x CHUNK`` images) after it.

What is approximate: the shuffle is shard order plus a buffer, not a uniform permutation of
the split (raise ``data.shuffle_buffer``, write more and smaller shards); batch sizes vary by
the processes' imbalance (write many more shards than processes x workers); and the resume
position assumes the process and worker counts of the run that stopped.
"""

from __future__ import annotations

import io
import logging
import posixpath
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from imagefit.config import Config
from imagefit.data.augment import BatchAugment
from imagefit.data.images import IMAGE_EXTENSIONS, load_rgb
from imagefit.data.loaders import Batch, DataBundle, Loader, _ignore_stop_signals, derive_seed
from imagefit.data.preprocessing import resolve_preprocessing
from imagefit.data.shards import ShardEntry, ShardIndex, index_manifest, read_index
from imagefit.data.store import PixelSpec
from imagefit.errors import DataError

log = logging.getLogger(__name__)
keys_log = logging.getLogger(__name__ + ".keys")  # DEBUG: the sample keys of every training step

CHUNK = 16  # images a loader worker sends at once: fewer, larger messages between processes
_IMAGE_KEYS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS) + ("img",)


def deal(counts: Sequence[int], order: Sequence[int], slots: int) -> list[list[int]]:
    """Give each item of ``order`` (indices into ``counts``) to the slot holding least so far."""
    held = [0] * slots
    out: list[list[int]] = [[] for _ in range(slots)]
    for item in order:
        slot = min(range(slots), key=lambda s: (held[s], s))
        out[slot].append(item)
        held[slot] += counts[item]
    return out


@dataclass
class EpochPlan:
    """One process's shards for one epoch, per loader worker, and every process's total."""

    workers: list[list[ShardEntry]]
    rank_counts: list[int]

    @property
    def worker_counts(self) -> list[int]:
        return [sum(entry.count for entry in shards) for shards in self.workers]


def plan_epoch(
    shards: Sequence[ShardEntry],
    epoch: int,
    seed: int,
    shuffle: bool,
    shard: tuple[int, int],
    workers: int,
) -> EpochPlan:
    counts = [entry.count for entry in shards]
    if shuffle:
        order = np.random.default_rng(derive_seed(seed, epoch, 2)).permutation(len(shards))
    else:
        order = np.arange(len(shards))
    rank, world = shard
    per_rank = deal(counts, order.tolist(), world)
    per_worker = deal(counts, per_rank[rank], max(1, workers))
    return EpochPlan(
        [[shards[i] for i in slot] for slot in per_worker],
        [sum(counts[i] for i in slot) for slot in per_rank],
    )


def resume_point(worker_counts: Sequence[int], consumed: int) -> tuple[list[int], int]:
    """(samples each worker skips undecoded, samples to drop after them) to resume after
    ``consumed`` samples of the workers' round-robin of chunks.

    A restarted DataLoader takes chunks from worker 0 first, so the stream restarts at the
    last complete round, where every worker's next chunk is exactly the one it had next then.
    """
    remaining, done, rounds = list(worker_counts), 0, 0
    while True:
        this_round = sum(min(CHUNK, n) for n in remaining)
        if this_round == 0 or done + this_round > consumed:
            break
        done += this_round
        remaining = [max(0, n - CHUNK) for n in remaining]
        rounds += 1
    return [min(rounds * CHUNK, n) for n in worker_counts], consumed - done


def _tar_samples(urls: Sequence[str]) -> Iterator[dict]:
    """The samples of tar files in order, each opened through fsspec (local paths and URLs)."""
    import fsspec
    from webdataset.tariterators import group_by_keys, tar_file_expander

    def opened() -> Iterator[dict]:
        for url in urls:
            try:
                handle = fsspec.open(url, "rb").open()
            except (OSError, ValueError) as exc:
                raise DataError(f"{url}: cannot open shard ({type(exc).__name__}: {exc})") from None
            with handle:
                yield {"url": url, "stream": handle}

    yield from group_by_keys(tar_file_expander(opened()))


def decode_sample(sample: dict, spec: PixelSpec, min_size: int) -> tuple[np.ndarray, int]:
    """A shard sample -> ((S, S, 3) uint8, label), with the decoding files get (load_rgb)."""
    name = f"{sample.get('__url__', '?')}:{sample['__key__']}"
    image = next((sample[key] for key in _IMAGE_KEYS if key in sample), None)
    if image is None or "cls" not in sample:
        raise DataError(f"{name}: shard sample has no image or no .cls label ({sorted(sample)})")
    rgb = load_rgb(io.BytesIO(image), min_size, name=name)
    return spec.crop(rgb), int(sample["cls"])


class _ShardSamples(IterableDataset):
    """Chunks of decoded samples; DataLoader worker ``w`` reads the shards dealt to ``w``."""

    def __init__(
        self,
        plan: EpochPlan,
        skips: list[int],
        buffer: int,
        seeds: list[int],
        spec: PixelSpec,
        min_size: int,
    ):
        super().__init__()
        self.urls = [[entry.url for entry in shards] for shards in plan.workers]
        self.skips, self.buffer, self.seeds = skips, buffer, seeds
        self.spec, self.min_size = spec, min_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        samples: Iterator[dict] = _tar_samples(self.urls[worker])
        if self.buffer > 1:
            from webdataset.filters import _shuffle

            rng = random.Random(self.seeds[worker])
            samples = _shuffle(samples, self.buffer, self.buffer, rng=rng)
        skip = self.skips[worker]
        chunk: list[tuple[np.ndarray, int, str]] = []
        for position, sample in enumerate(samples):
            if position < skip:
                continue  # trained on before the resume: read, never decoded
            pixels, label = decode_sample(sample, self.spec, self.min_size)
            chunk.append((pixels, label, sample["__key__"]))
            if len(chunk) == CHUNK:
                yield _stack(chunk)
                chunk = []
        if chunk:
            yield _stack(chunk)


def _stack(
    chunk: list[tuple[np.ndarray, int, str]],
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    pixels = torch.from_numpy(np.stack([item[0] for item in chunk]))
    return pixels, torch.tensor([item[1] for item in chunk]), [item[2] for item in chunk]


class ShardLoader(Loader):
    """A :class:`Loader` whose pixels stream from tar shards (see the module docstring)."""

    def __init__(
        self,
        shards: Sequence[ShardEntry],
        batch_size: int,
        device: torch.device,
        *,
        spec: PixelSpec,
        min_size: int = 1,
        workers: int = 0,
        buffer: int = 1000,
        **options,
    ):
        super().__init__(None, batch_size, device, **options)  # type: ignore[arg-type]
        self.shards, self.spec, self.min_size = list(shards), spec, min_size
        self.workers, self.buffer = workers, buffer
        self.pin_memory = device.type == "cuda"
        self.current_epoch = 0

    @property
    def num_samples(self) -> int:
        return sum(entry.count for entry in self.shards)

    def plan(self, epoch: int) -> EpochPlan:
        return plan_epoch(self.shards, epoch, self.seed, self.shuffle, self.shard, self.workers)

    def batch_sizes(self, plan: EpochPlan) -> list[int]:
        """This process's batch sizes for the epoch (before ``limit``)."""
        rank = self.shard[0]
        mine = plan.rank_counts[rank]
        if self.shuffle:  # training: every process takes the same number of steps
            steps = max(-(-count // self.batch_size) for count in plan.rank_counts)
            if mine < steps:
                raise DataError(
                    f"process {rank} was dealt {mine} samples for {steps} steps: the shards "
                    f"are too few or too uneven for {len(plan.rank_counts)} processes; write "
                    "more, smaller shards (imagefit data shards --shard-size)"
                )
            return [len(part) for part in np.array_split(np.arange(mine), steps)]
        full, rest = divmod(mine, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])

    def __len__(self) -> int:
        """Steps of the epoch last started (the deal, hence the count, changes per epoch)."""
        steps = len(self.batch_sizes(self.plan(self.current_epoch)))
        return min(steps, self.limit) if self.limit else steps

    def index_batches(self, epoch: int) -> list[np.ndarray]:
        raise DataError("a shard stream has no random access; iterate ShardLoader.epoch()")

    def sample_batches(
        self, epoch: int, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """uint8 batches ``start..`` of ``epoch`` with their sample keys (pixels, labels, keys)."""
        plan = self.plan(epoch)
        sizes = self.batch_sizes(plan)[: self.limit or None]
        skips, drop = resume_point(plan.worker_counts, sum(sizes[:start]))
        rank = self.shard[0]
        seeds = [derive_seed(self.seed, epoch, 3, rank, w) for w in range(len(plan.workers))]
        dataset = _ShardSamples(
            plan, skips, self.buffer if self.shuffle else 0, seeds, self.spec, self.min_size
        )
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=_ignore_stop_signals if self.workers else None,
        )
        chunks = iter(loader)
        held: list[tuple[torch.Tensor, torch.Tensor, list[str]]] = []
        count = 0
        # The first "batch" is what a resume decodes and drops (see resume_point).
        for position, size in enumerate([drop, *sizes[start:]]):
            while count < size:
                try:
                    part = next(chunks)
                except StopIteration:
                    raise DataError(
                        f"the shards hold fewer samples than their index says "
                        f"({len(self.shards)} shards from {self.shards[0].url})"
                    ) from None
                held.append(part)
                count += len(part[1])
            if not size:
                continue
            pixels = torch.cat([p[0] for p in held])
            labels = torch.cat([p[1] for p in held])
            keys = [key for p in held for key in p[2]]
            held = [(pixels[size:], labels[size:], keys[size:])]
            count -= size
            if position:
                yield pixels[:size], labels[:size], keys[:size]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Not a generator itself: len() must see this epoch before the first batch is drawn.
        self.current_epoch = epoch

        def batches() -> Iterator[Batch]:
            for step, (pixels, labels, keys) in enumerate(self.sample_batches(epoch, start), start):
                if self.shuffle:  # which samples each training step saw, to audit an epoch
                    keys_log.debug("epoch %d step %d rank %d: %s", epoch, step, self.shard[0], keys)
                yield pixels, labels

        return self.prepare(batches(), epoch, start)


def resolve_shards(spec: str) -> tuple[ShardIndex, list[ShardEntry]]:
    """``data.shards`` -> (the index, the training shards).

    A folder or URL holding ``index.json`` trains on its train split; a brace pattern
    (``s3://bucket/train-{000000..000123}.tar``) on the shards it names, which the index beside
    them must list (it holds their sample counts and the class names).
    """
    if "{" not in spec and not spec.endswith(".tar"):
        index = read_index(spec)
        return index, index.splits["train"]
    from braceexpand import braceexpand

    base = posixpath.dirname(spec) if "://" in spec else str(Path(spec).parent)
    index = read_index(base)
    known = {posixpath.basename(e.url): e for entries in index.splits.values() for e in entries}
    names = [posixpath.basename(url) for url in braceexpand(spec)]
    missing = [name for name in names if name not in known]
    if missing:
        raise DataError(
            f"data.shards={spec}: {len(missing)} shard(s) not in {base}/index.json "
            f"(e.g. {missing[0]})"
        )
    return index, [known[name] for name in names]


def build_shard_data(
    cfg: Config,
    device: torch.device,
    *,
    batch_size: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> DataBundle:
    """The DataBundle of ``data.shards``: the same loaders as files give, streamed."""
    d, t = cfg.data, cfg.train
    assert d.shards is not None  # build_data routes here only then
    index, train = resolve_shards(d.shards)
    manifest = index_manifest(index)
    if manifest is None:
        raise DataError(f"{index.base}: the shard index names no split manifest")
    log.info(
        "data: %s, %d classes, %s images, streamed from tar shards",
        d.shards,
        len(index.classes),
        {name: index.count(name) for name in index.splits},
    )
    # Shards hold encoded files in stream order: every split gets the evaluation pixels, and
    # training crops are drawn from them (no whole-image store without random access).
    pre = resolve_preprocessing(cfg)
    spec = PixelSpec(d.image_size, pre.crop_pct, pre.interpolation)
    loaders: dict[str, Loader] = {}
    for name, entries in {**index.splits, "train": train}.items():
        if not entries or not sum(e.count for e in entries):
            continue
        is_train = name == "train"
        augment = None
        if is_train and d.augment:
            classes = len(index.classes)
            augment = BatchAugment(cfg.augment, d.image_size, classes, mean=pre.mean, std=pre.std)
        size = (batch_size or t.batch_size) if is_train else (t.eval_batch_size or t.batch_size)
        loaders[name] = ShardLoader(
            entries,
            size,
            device,
            spec=spec,
            min_size=d.min_size,
            workers=d.num_workers,
            buffer=d.shuffle_buffer,
            shuffle=is_train,
            augment=augment,
            seed=t.seed,
            mean=pre.mean,
            std=pre.std,
            limit=t.limit_batches,
            shard=shard,
        )
    return DataBundle(
        index.classes,
        manifest,
        loaders["train"],
        loaders.get("val"),
        loaders.get("test"),
        cached=False,
        preprocessing=pre,
    )
