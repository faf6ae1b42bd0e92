"""Fixtures of the server tests: one small untrained model, a short synthetic video at 120x160,
servers on loopback port 0, and the in-process tracker as the oracle."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

pytest.importorskip("grpc", reason="the serve extra (grpcio) is not installed")
pytest.importorskip("grpc_health", reason="the serve extra (grpcio-health-checking) is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra (prometheus-client) is not installed")

from mevos.client import TrackingClient  # noqa: E402
from mevos.data.synthetic import SyntheticConfig, SyntheticVideo, generate  # noqa: E402
from mevos.runtime.backend import TorchBackend  # noqa: E402
from mevos.runtime.tracker import Tracker, TrackerConfig  # noqa: E402
from mevos.server import Limits, MevosServer, ServerConfig, create_server  # noqa: E402

#: cheap settings for the tests: what the sessions send and the oracle uses
SETTINGS = {"top_k": 10, "mem_frames": 4, "refine_rounds": 1}
TRACKER = TrackerConfig(top_k=10, mem_frames=4, refine_rounds=1)


# Set at import, before the first torch op of the process: threads that torch has not seen yet
# (gRPC handlers, the scheduler) then start with one intra-op thread too. Set only in a fixture,
# a run of these tests alone left those threads at the machine's default, and the server's masks
# differed from the in-process oracle's on near-tie pixels (while the whole suite, where an earlier
# test had set one thread, passed).
import torch as _torch  # noqa: E402

_torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Sessions and the scheduler run in parallel threads; torch's own intra-op threads on top
    oversubscribe a small machine badly (seconds per frame instead of tens of ms), so these
    tests run as `mevos serve` does on the CPU: one intra-op thread per calling thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def backend() -> TorchBackend:
    import torch

    from mevos.model import build_model, preset

    torch.manual_seed(0)
    return TorchBackend(build_model(preset("small"), seed=0), device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def video() -> SyntheticVideo:
    return generate(SyntheticConfig(height=120, width=160, num_frames=10, num_objects=3, seed=3))


@dataclass
class Served:
    server: MevosServer
    port: int
    target: str = field(init=False)

    def __post_init__(self) -> None:
        self.target = f"127.0.0.1:{self.port}"

    def client(self, **kw: object) -> TrackingClient:
        return TrackingClient(self.target, **kw)  # type: ignore[arg-type]


def start(backend: TorchBackend, **limits: object) -> Served:
    config = ServerConfig(host="127.0.0.1", port=0, limits=Limits(**limits), metrics_port=0,  # type: ignore[arg-type]
                          model_description="test weights")
    server, port = create_server(backend, config)
    return Served(server, port)


@pytest.fixture(scope="module")
def served(backend: TorchBackend) -> Iterator[Served]:
    s = start(backend)
    yield s
    s.server.stop(grace=0)


def reference(backend: TorchBackend, frames: Sequence[np.ndarray],
              ops: Sequence[tuple[np.ndarray | None, tuple[int, ...]]], config: TrackerConfig = TRACKER) -> list[np.ndarray]:
    """Label maps of the in-process tracker; ops[i] = (masks, remove) of frame i."""
    tracker = Tracker(backend, config)
    return [tracker.step(f, masks=m, remove=r).labels for f, (m, r) in zip(frames, ops)]


@pytest.fixture(scope="session")
def plain_reference(backend: TorchBackend, video: SyntheticVideo) -> list[np.ndarray]:
    """The oracle's label maps for the whole video given objects on frame 0 only."""
    ops = [(video.labels[0], ())] + [(None, ())] * (len(video.frames) - 1)
    return reference(backend, video.frames, ops)
