"""Dynamic batching: requests that arrive while the device is busy, or that are still being
received when a batch starts and arrive within `max_wait_s`, run together as one batch of up
to `max_batch` images.

A batch waits only for requests already on their way (`incoming`: being read and parsed),
never for requests that may or may not come: with the device idle and nothing incoming it
runs at once, so a lone client gets batch-of-one latency, and under load the requests that
queue during one batch form the next. (A fixed wait cost a closed loop of 8 clients half its
throughput here: all 8 sat out every wait with the device idle.)

Only a few batch sizes (the buckets: powers of two up to max_batch) are ever compiled, all
at warm-up, so no request waits for XLA. A batch of n images runs as exact bucket-sized
pieces, largest first (37 = 32 + 4 + 1), rather than padded up to the next bucket: on a
CPU the cost per image hardly falls with the batch size (simple_cnn here: 0.74 ms/image
alone, 0.56 at 64), so padding 33 images to 64 would nearly double the work, while the
extra calls cost well under a millisecond each.

One asyncio task collects requests from a queue; the device calls run in a one-thread
executor, so the event loop keeps accepting and parsing requests meanwhile, and device
calls never overlap (they would only compete for the same cores). A request larger than
`max_batch` is split into chunks that queue like separate requests. With max_batch=1
every image is its own device call: batching is off.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
from collections.abc import Callable

import numpy as np


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes that are ever compiled: powers of two below max_batch, and max_batch
    (log2(max_batch) + 1 shapes)."""
    sizes = {max_batch}
    size = 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def bucket_pieces(n: int, buckets: tuple[int, ...]) -> list[int]:
    """n as a sum of bucket sizes, largest first; exact, because every power of two up to
    max_batch is a bucket."""
    pieces = []
    for size in reversed(buckets):
        while n >= size:
            pieces.append(size)
            n -= size
    return pieces


@dataclasses.dataclass
class _Chunk:
    images: np.ndarray
    result: asyncio.Future


class Batcher:
    def __init__(self, logits: Callable[[np.ndarray], np.ndarray], image_shape: tuple[int, ...], max_batch: int,
                 max_wait_s: float, on_batch: Callable[[int], None]):
        self._logits = logits
        self._image_shape = image_shape
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.buckets = batch_buckets(max_batch)
        self._on_batch = on_batch  # called with the number of images of each batch
        self._queue: asyncio.Queue[_Chunk] = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="device")
        self._task: asyncio.Task | None = None
        self._incoming = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown()

    async def warm_up(self) -> None:
        """Compile every bucket now, on the device thread, so that no request waits for a compilation."""
        loop = asyncio.get_running_loop()
        for size in self.buckets:
            await loop.run_in_executor(self._executor, self._logits, np.zeros((size, *self._image_shape), np.uint8))

    @contextlib.contextmanager
    def incoming(self):
        """Wrap the reading and parsing of a request that will call `logits`: a batch being
        collected meanwhile waits (up to max_wait_s) for it."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    async def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 logits of uint8 (n, S, S, 3) images, computed together with other requests'."""
        loop = asyncio.get_running_loop()
        chunks = [_Chunk(images[i:i + self.max_batch], loop.create_future())
                  for i in range(0, len(images), self.max_batch)]
        for chunk in chunks:
            self._queue.put_nowait(chunk)
        return np.concatenate(await asyncio.gather(*(chunk.result for chunk in chunks)))

    async def _run(self) -> None:
        carried: _Chunk | None = None
        while True:
            batch = [carried if carried is not None else await self._queue.get()]
            carried = await self._collect(batch)
            await self._compute(batch)

    async def _collect(self, batch: list[_Chunk]) -> _Chunk | None:
        """Add queued chunks to `batch` until it is full, nothing more is incoming, or the wait
        is over; returns the chunk that did not fit, which starts the next batch."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        size = len(batch[0].images)
        while size < self.max_batch:
            try:
                chunk = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if not self._incoming:
                    return None
                try:
                    chunk = await asyncio.wait_for(self._queue.get(), deadline - loop.time())
                except TimeoutError:
                    return None
            if size + len(chunk.images) > self.max_batch:
                return chunk
            batch.append(chunk)
            size += len(chunk.images)
        return None

    def _bucketed_logits(self, images: np.ndarray) -> np.ndarray:
        """On the device thread: the logits of `images`, piece by compiled piece."""
        starts = np.cumsum([0, *bucket_pieces(len(images), self.buckets)])
        return np.concatenate([self._logits(images[a:b]) for a, b in zip(starts[:-1], starts[1:])])

    async def _compute(self, batch: list[_Chunk]) -> None:
        images = np.concatenate([chunk.images for chunk in batch])
        try:
            logits = await asyncio.get_running_loop().run_in_executor(self._executor, self._bucketed_logits, images)
        except Exception as error:  # the requests fail with it; the server keeps serving
            for chunk in batch:
                if not chunk.result.done():
                    chunk.result.set_exception(error)
            return
        self._on_batch(len(images))
        start = 0
        for chunk in batch:
            if not chunk.result.done():  # its client may have gone away
                chunk.result.set_result(logits[start:start + len(chunk.images)])
            start += len(chunk.images)
