"""The committed generated code is fresh, and the codec round-trips frames and label maps."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mevos.proto import codec
from mevos.proto.mevos.v1 import tracking_pb2 as pb


def test_generated_code_is_fresh() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) is not installed")
    pytest.importorskip("mypy_protobuf", reason="mypy-protobuf (dev extra) is not installed")
    import grpc_tools

    from mevos.proto import regenerate
    from mevos.proto.mevos.v1 import tracking_pb2_grpc

    stale = regenerate.stale_files()
    tools = getattr(grpc_tools, "__version__", None) or _dist_version("grpcio-tools")
    assert not stale, (
        f"generated code is stale: {stale}; run `python -m mevos.proto.regenerate` and commit "
        f"(committed code was made by grpcio-tools {tracking_pb2_grpc.GRPC_GENERATED_VERSION}, installed: {tools})"
    )


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


@pytest.mark.parametrize("command", ["serve", "stream"])
def test_commands_name_the_extra_when_grpc_is_missing(command: str) -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['grpc'] = None; sys.modules['google.protobuf'] = None; "
            f"import mevos; from mevos.cli import main; sys.exit(main(['{command}', '--help']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "pip install 'mevos[serve]'" in done.stderr


def test_generated_imports_are_package_relative() -> None:
    from mevos.proto.mevos.v1 import tracking_pb2_grpc

    assert tracking_pb2_grpc.TrackingStub is not None
    assert pb.DESCRIPTOR.package == "mevos.v1"
    assert set(pb.DESCRIPTOR.services_by_name["Tracking"].methods_by_name) == {"Track", "GetServerInfo"}


def _labels(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros((37, 53), dtype=np.uint8)
    lab[5:20, 7:30] = 1
    lab[15:35, 25:50] = 3
    lab[rng.random(lab.shape) < 0.02] = 255
    return lab


@pytest.mark.parametrize("encoding", ["png", "rle", "raw"])
def test_label_map_round_trip(encoding: str) -> None:
    lab = _labels()
    msg = codec.encode_label_map(lab, encoding)
    assert (msg.width, msg.height) == (53, 37)
    np.testing.assert_array_equal(codec.decode_label_map(msg), lab)


def test_encodings_decode_to_the_same_map() -> None:
    lab = _labels(1)
    maps = [codec.decode_label_map(codec.encode_label_map(lab, e)) for e in ("png", "rle", "raw")]
    for m in maps[1:]:
        np.testing.assert_array_equal(m, maps[0])


def test_rle_layout_is_documented_one() -> None:
    lab = np.array([[0, 0, 2], [2, 2, 0]], dtype=np.uint8)
    data = codec.rle_encode(lab)
    assert data == bytes([0, 2, 0, 0, 0, 2, 3, 0, 0, 0, 0, 1, 0, 0, 0])


@pytest.mark.parametrize("data, message", [
    (b"\x01\x02", "whole number of 5-byte runs"),
    (bytes([1, 0, 0, 0, 0]), "length 0"),
    (bytes([1, 5, 0, 0, 0]), "cover 5 pixels"),
])
def test_rle_errors(data: bytes, message: str) -> None:
    msg = pb.LabelMap(encoding=pb.MASK_ENCODING_RLE, data=data, width=3, height=2)
    with pytest.raises(codec.CodecError, match=message):
        codec.decode_label_map(msg)


@pytest.mark.parametrize("fmt", ["png", "raw", "jpeg"])
def test_image_round_trip(fmt: str) -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    out = codec.decode_image(codec.encode_image(frame, fmt))
    assert out.shape == frame.shape and out.dtype == np.uint8
    if fmt != "jpeg":
        np.testing.assert_array_equal(out, frame)


def test_image_declared_size_and_format_are_checked() -> None:
    frame = np.zeros((24, 40, 3), dtype=np.uint8)
    msg = codec.encode_image(frame, "png")
    msg.width = 41
    with pytest.raises(codec.CodecError, match="declared size 41x24"):
        codec.decode_image(msg)
    msg = codec.encode_image(frame, "png")
    msg.format = pb.IMAGE_FORMAT_JPEG
    with pytest.raises(codec.CodecError, match="cannot decode as JPEG"):
        codec.decode_image(msg)
    with pytest.raises(codec.CodecError, match="max_frame_side 32"):
        codec.decode_image(codec.encode_image(frame, "raw"), max_side=32)


def test_png_label_map_must_be_8_bit_ids() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3)).save(buf, format="PNG")
    msg = pb.LabelMap(encoding=pb.MASK_ENCODING_PNG, data=buf.getvalue(), width=4, height=3)
    with pytest.raises(codec.CodecError, match="mode 'RGB'"):
        codec.decode_label_map(msg)
