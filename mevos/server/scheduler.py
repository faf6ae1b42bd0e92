"""One scheduler shares a backend among many sessions and batches their model stages.

Each session's Tracker runs in its own thread against a `SessionBackend`: a Backend whose
encode_key / encode_value / decode calls are queued here and run by one worker thread, which
gathers calls of the same stage and shape from different sessions into one batched call (at most
`max_batch` calls, waiting at most `max_wait_s` for sessions that are mid-frame to join; the
largest compatible group runs first, so sessions that drifted apart fall back into step). The
Tracker is unchanged, and the backend is only ever called from one thread (TensorRT execution
contexts and CUDA streams are not thread-safe).

Batched shapes: encode_key concatenates the 1 x 3 x H x W images; encode_value repeats each
session's image once per object and concatenates images and masks (the backend must accept an
image batch equal to the mask batch, as the torch backend and the exported graphs do); decode
concatenates readouts and values and repeats each session's skips once per object. A single call
runs with its own tensors, untouched, so one session alone gets exactly the in-process results.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mevos.errors import UsageError
from mevos.model.config import ModelConfig
from mevos.runtime.backend import Backend

OPS = ("encode_key", "encode_value", "decode")
STARVATION = 4  # a call never waits longer than about this many max_wait_s for other groups


@dataclass
class _Call:
    op: str
    args: tuple[Tensor, ...]
    rows: int  # batch entries this call contributes (1 image, or O objects)
    key: tuple[Any, ...]  # calls with equal keys can share a batch
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


def _signature(op: str, args: tuple[Tensor, ...]) -> tuple[Any, ...]:
    """Shapes that must match for calls to be concatenated (everything but the batch dim)."""
    return (op, *[(tuple(a.shape[1:]), a.dtype, a.device) for a in args])


class Scheduler:
    """Runs the model stages of all sessions on one worker thread, batching across sessions.

    on_batch(op, calls, rows, seconds) is called after each executed batch (for metrics).
    """

    def __init__(self, backend: Backend, max_batch: int = 8, max_wait_s: float = 0.005,
                 on_batch: Callable[[str, int, int, float], None] | None = None) -> None:
        if max_batch < 1:
            raise UsageError("max_batch must be >= 1")
        if max_wait_s < 0:
            raise UsageError("max_wait_s must be >= 0")
        self.backend = backend
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._busy = 0  # sessions inside a frame (that may submit a call soon)
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="mevos-scheduler", daemon=True)
        self._worker.start()

    # -- session side ---------------------------------------------------------------------------

    def session_backend(self) -> SessionBackend:
        """A Backend for one session's Tracker (use from one thread at a time)."""
        return SessionBackend(self)

    @property
    def queue_depth(self) -> int:
        """Calls waiting to run."""
        with self._cond:
            return len(self._pending)

    def _enter(self) -> None:
        with self._cond:
            self._busy += 1

    def _leave(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def submit(self, op: str, args: tuple[Tensor, ...], rows: int) -> _Call:
        """Queue one call and wait for it; returns the finished call (result or error set)."""
        call = _Call(op, args, rows, _signature(op, args))
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._pending.append(call)
            self._cond.notify_all()
        call.done.wait()
        return call

    def close(self, timeout: float = 5.0) -> None:
        """Finish the queued calls, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)

    # -- worker side ----------------------------------------------------------------------------

    def _take_batch(self) -> list[_Call] | None:
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            # Sessions mid-frame will submit soon: wait (bounded) until all of them have a call
            # queued, so that sessions in step with each other share batches.
            deadline = self._pending[0].submitted + self.max_wait_s
            while len(self._pending) < min(self._busy, self.max_batch) and not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = self._pick(self._pending)
            taken = {id(c) for c in batch}
            self._pending = [c for c in self._pending if id(c) not in taken]
            return batch

    def _pick(self, pending: list[_Call]) -> list[_Call]:
        """The largest group of compatible calls (oldest first among equals); a call that has
        waited past STARVATION x max_wait goes first whatever its group's size."""
        oldest = pending[0]
        if time.perf_counter() - oldest.submitted > STARVATION * self.max_wait_s:
            key = oldest.key
        else:
            groups: dict[tuple[Any, ...], int] = {}
            for c in pending:
                groups[c.key] = groups.get(c.key, 0) + 1
            key = max(groups, key=lambda k: groups[k])  # dicts keep insertion order: ties go to the oldest
        return [c for c in pending if c.key == key][: self.max_batch]

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            t0 = time.perf_counter()
            for call in batch:
                call.started = t0
            try:
                with torch.inference_mode():
                    results = self._execute(batch)
                for call, res in zip(batch, results):
                    call.result = res
            except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
                for call in batch:
                    call.error = exc
            finally:
                for call in batch:
                    call.done.set()
            if self._on_batch is not None:
                self._on_batch(batch[0].op, len(batch), sum(c.rows for c in batch), time.perf_counter() - t0)

    def _execute(self, batch: list[_Call]) -> list[Any]:
        op, b = batch[0].op, self.backend
        if len(batch) == 1:
            return [getattr(b, op)(*batch[0].args)]
        rows = [c.rows for c in batch]
        if op == "encode_key":
            outs = b.encode_key(torch.cat([c.args[0] for c in batch]))
            parts = [t.split(1) for t in outs]
            return [tuple(p[i] for p in parts) for i in range(len(batch))]
        if op == "encode_value":
            images = torch.cat([c.args[0].expand(c.rows, -1, -1, -1) for c in batch])
            return list(b.encode_value(images, torch.cat([c.args[1] for c in batch])).split(rows))
        if op == "decode":
            readout = torch.cat([c.args[0] for c in batch])
            value = torch.cat([c.args[1] for c in batch])
            res3 = torch.cat([c.args[2].expand(c.rows, -1, -1, -1) for c in batch])
            res2 = torch.cat([c.args[3].expand(c.rows, -1, -1, -1) for c in batch])
            return list(b.decode(readout, value, res3, res2).split(rows))
        raise UsageError(f"unknown stage {op!r}")


class SessionBackend:
    """The Backend one session's Tracker sees: each stage goes through the shared Scheduler.

    `wait_s` accumulates the time this session's calls spent queued (reset it per frame).
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        inner = scheduler.backend
        self.name: str = inner.name
        self.device: torch.device = inner.device
        self.config: ModelConfig = inner.config
        self.wait_s = 0.0

    @contextlib.contextmanager
    def frame(self) -> Iterator[None]:
        """Mark this session as mid-frame, so the scheduler waits briefly for its calls."""
        self._scheduler._enter()
        try:
            yield
        finally:
            self._scheduler._leave()

    def _call(self, op: str, args: tuple[Tensor, ...], rows: int) -> Any:
        call = self._scheduler.submit(op, args, rows)
        self.wait_s += max(0.0, call.started - call.submitted)
        if call.error is not None:
            raise call.error
        return call.result

    def encode_key(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """image 1 x 3 x H x W -> (key, res3, res2), each with batch 1."""
        return self._call("encode_key", (image,), 1)

    def encode_value(self, image: Tensor, masks: Tensor) -> Tensor:
        """image 1 x 3 x H x W, masks O x 1 x H x W -> values O x Cv x H/8 x W/8."""
        return self._call("encode_value", (image, masks), int(masks.shape[0]))

    def decode(self, readout: Tensor, value: Tensor, res3: Tensor, res2: Tensor) -> Tensor:
        """readout, value O x Cv x h x w; skips with batch 1 -> logits O x 1 x 8h x 8w."""
        return self._call("decode", (readout, value, res3, res2), int(readout.shape[0]))
