"""The bytes inside the messages: frames (JPEG, PNG, raw RGB) and label maps (PNG, run-length, raw),
encoded and decoded the same way on both sides of the wire.

Decoding never trusts a message: sizes are checked against the declared ones and the limits
before any pixel is decoded, and every failure is a CodecError (an InputError) whose message
says what was wrong.
"""

from __future__ import annotations

import io
import re
from typing import cast

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from mevos.data.palette import PALETTE
from mevos.errors import InputError, require

require("google.protobuf", "serve", "the mevos wire format", package="protobuf")
from mevos.proto.mevos.v1 import tracking_pb2 as pb  # noqa: E402

#: user-facing names of the enums (CLI options, docs)
IMAGE_FORMATS: dict[str, int] = {"jpeg": pb.IMAGE_FORMAT_JPEG, "png": pb.IMAGE_FORMAT_PNG, "raw": pb.IMAGE_FORMAT_RAW_RGB}
MASK_ENCODINGS: dict[str, int] = {"png": pb.MASK_ENCODING_PNG, "rle": pb.MASK_ENCODING_RLE, "raw": pb.MASK_ENCODING_RAW}
_PIL_FORMAT = {pb.IMAGE_FORMAT_JPEG: "JPEG", pb.IMAGE_FORMAT_PNG: "PNG"}
#: one run: object id (uint8) then its length (little-endian uint32)
RLE_RUN = np.dtype([("label", "u1"), ("count", "<u4")])


class CodecError(InputError):
    """Bytes that do not decode to what their message declares."""


#: longest library message quoted in a CodecError (they can quote the input)
MAX_DETAIL = 200


def _reason(exc: BaseException) -> str:
    """A decoder's exception as a short, safe phrase: no object addresses, no long quotes."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file of this format"
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", str(exc))
    text = re.sub(r"<_io\.BytesIO object>", "the data", text)
    if len(text) > MAX_DETAIL:
        text = text[:MAX_DETAIL] + "..."
    return f"{type(exc).__name__}: {text}"


def _open(data: bytes, fmt: str, what: str, max_side: int | None) -> PILImage.Image:
    """PIL image of `data` (header read, no pixel decoded yet) after checking its size against
    max_side; a header claiming more than PIL's decompression-bomb limit is a CodecError too."""
    try:
        im = PILImage.open(io.BytesIO(data), formats=[fmt])
    except PILImage.DecompressionBombError as exc:
        raise CodecError(f"{what}: the {fmt} header claims an image too large to decode "
                         f"({_reason(exc)})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CodecError(f"{what}: cannot decode as {fmt} ({_reason(exc)})") from None
    w, h = im.size
    limit = PILImage.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        im.close()
        raise CodecError(f"{what}: the {fmt} header claims an image too large to decode ({w}x{h} pixels, "
                         f"over {limit})")
    if max_side is not None and max(w, h) > max_side:
        im.close()
        raise CodecError(f"{what}: size {w}x{h} exceeds the server's max_frame_side {max_side}")
    return im


def image_size(msg: pb.Image, max_side: int | None = None, what: str = "frame") -> tuple[int, int]:
    """(width, height) of a frame without decoding it: the declared size, or for JPEG/PNG with
    width and height both 0, the size in the file's header. CodecError when unset or over max_side."""
    if msg.width == 0 and msg.height == 0 and msg.format in _PIL_FORMAT:
        with _open(msg.data, _PIL_FORMAT[msg.format], what, max_side) as im:
            return im.size
    _check_size(msg.width, msg.height, what, max_side)
    return msg.width, msg.height


def _check_size(width: int, height: int, what: str, max_side: int | None) -> None:
    if width < 1 or height < 1:
        raise CodecError(f"{what}: width and height must be set (> 0), got {width}x{height}")
    if max_side is not None and max(width, height) > max_side:
        raise CodecError(f"{what}: size {width}x{height} exceeds the server's max_frame_side {max_side}")


# -- frames ---------------------------------------------------------------------------------------

def encode_image(frame: np.ndarray, fmt: int | str = "jpeg", quality: int = 90) -> pb.Image:
    """frame H x W x 3 uint8 RGB -> Image message in `fmt` (an ImageFormat or 'jpeg'/'png'/'raw')."""
    f = IMAGE_FORMATS[fmt] if isinstance(fmt, str) else fmt
    arr = np.ascontiguousarray(frame, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"a frame must be H x W x 3 uint8 RGB, got shape {arr.shape}")
    h, w = arr.shape[:2]
    if f == pb.IMAGE_FORMAT_RAW_RGB:
        data = arr.tobytes()
    elif f in _PIL_FORMAT:
        buf = io.BytesIO()
        im = PILImage.fromarray(arr, "RGB")
        if f == pb.IMAGE_FORMAT_JPEG:
            im.save(buf, format="JPEG", quality=quality)
        else:
            im.save(buf, format="PNG", compress_level=1)
        data = buf.getvalue()
    else:
        raise InputError(f"unknown image format {fmt!r}")
    return pb.Image(format=cast(pb.ImageFormat.ValueType, f), data=data, width=w, height=h)


def decode_image(msg: pb.Image, max_side: int | None = None, what: str = "frame") -> np.ndarray:
    """Image message -> H x W x 3 uint8 RGB. Raises CodecError on anything malformed. JPEG and PNG
    may leave width and height 0 (then the header's size is taken, checked against max_side)."""
    if msg.format in _PIL_FORMAT and msg.width == 0 and msg.height == 0:
        w, h = 0, 0
    else:
        _check_size(msg.width, msg.height, what, max_side)
        w, h = msg.width, msg.height
    if msg.format == pb.IMAGE_FORMAT_RAW_RGB:
        if len(msg.data) != w * h * 3:
            raise CodecError(f"{what}: raw RGB of {w}x{h} needs {w * h * 3} bytes, got {len(msg.data)}")
        return np.frombuffer(msg.data, dtype=np.uint8).reshape(h, w, 3)
    if msg.format not in _PIL_FORMAT:
        raise CodecError(f"{what}: image format {msg.format} is not JPEG, PNG or RAW_RGB")
    expected = _PIL_FORMAT[msg.format]
    try:
        with _open(msg.data, expected, what, max_side) as im:
            if w and im.size != (w, h):  # checked from the header, before any pixel is decoded
                raise CodecError(f"{what}: declared size {w}x{h} but the {expected} is {im.size[0]}x{im.size[1]}")
            im.load()
            rgb = im.convert("RGB")
    except CodecError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, PILImage.DecompressionBombError) as exc:
        raise CodecError(f"{what}: cannot decode as {expected} ({_reason(exc)})") from None
    return np.asarray(rgb, dtype=np.uint8)


# -- label maps ----------------------------------------------------------------------------------

def rle_encode(labels: np.ndarray) -> bytes:
    """H x W uint8 -> runs (see MASK_ENCODING_RLE): 1 byte id + 4 bytes little-endian length each."""
    flat = np.ascontiguousarray(labels, dtype=np.uint8).ravel()
    if flat.size == 0:
        return b""
    starts = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate([[0], starts])
    runs = np.empty(starts.size, dtype=RLE_RUN)
    runs["label"] = flat[starts]
    runs["count"] = np.diff(np.concatenate([starts, [flat.size]]))
    return runs.tobytes()


def rle_decode(data: bytes, height: int, width: int, what: str = "label map") -> np.ndarray:
    """Inverse of rle_encode; CodecError unless the runs cover exactly height x width pixels."""
    if len(data) % RLE_RUN.itemsize:
        raise CodecError(f"{what}: run-length data of {len(data)} bytes is not a whole number of 5-byte runs")
    runs = np.frombuffer(data, dtype=RLE_RUN)
    counts = runs["count"].astype(np.int64)
    if (counts == 0).any():
        raise CodecError(f"{what}: run-length data has a run of length 0")
    total = int(counts.sum())
    if total != height * width:
        raise CodecError(f"{what}: runs cover {total} pixels but {width}x{height} has {height * width}")
    return np.repeat(runs["label"], counts).reshape(height, width)


def encode_label_map(labels: np.ndarray, encoding: int | str = "png") -> pb.LabelMap:
    """H x W uint8 ids -> LabelMap message (a MaskEncoding or 'png'/'rle'/'raw'; UNSPECIFIED = png)."""
    enc = MASK_ENCODINGS[encoding] if isinstance(encoding, str) else encoding
    if enc == pb.MASK_ENCODING_UNSPECIFIED:
        enc = pb.MASK_ENCODING_PNG
    arr = np.ascontiguousarray(labels)
    if arr.ndim != 2 or arr.dtype.kind not in "uib" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
        raise InputError(f"a label map must be H x W integer ids in 0..255, got {arr.shape} {arr.dtype}")
    arr = arr.astype(np.uint8, copy=False)
    h, w = arr.shape
    if enc == pb.MASK_ENCODING_RAW:
        data = arr.tobytes()
    elif enc == pb.MASK_ENCODING_RLE:
        data = rle_encode(arr)
    elif enc == pb.MASK_ENCODING_PNG:
        im = PILImage.frombytes("P", (w, h), arr.tobytes())
        im.putpalette(PALETTE.tobytes())
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=1)
        data = buf.getvalue()
    else:
        raise InputError(f"unknown mask encoding {encoding!r}")
    return pb.LabelMap(encoding=cast(pb.MaskEncoding.ValueType, enc), data=data, width=w, height=h)


def decode_label_map(msg: pb.LabelMap, max_side: int | None = None, what: str = "masks") -> np.ndarray:
    """LabelMap message -> H x W uint8 ids. Raises CodecError on anything malformed."""
    _check_size(msg.width, msg.height, what, max_side)
    w, h = msg.width, msg.height
    if msg.encoding == pb.MASK_ENCODING_RAW:
        if len(msg.data) != w * h:
            raise CodecError(f"{what}: raw label map of {w}x{h} needs {w * h} bytes, got {len(msg.data)}")
        return np.frombuffer(msg.data, dtype=np.uint8).reshape(h, w).copy()  # writable, like the others
    if msg.encoding == pb.MASK_ENCODING_RLE:
        return rle_decode(msg.data, h, w, what)
    if msg.encoding != pb.MASK_ENCODING_PNG:
        raise CodecError(f"{what}: mask encoding {msg.encoding} is not PNG, RLE or RAW")
    try:
        with _open(msg.data, "PNG", what, max_side) as im:
            if im.size != (w, h):
                raise CodecError(f"{what}: declared size {w}x{h} but the PNG is {im.size[0]}x{im.size[1]}")
            if im.mode not in ("P", "L"):
                raise CodecError(f"{what}: PNG mode {im.mode!r}; label maps must be palette (P) or grayscale (L)")
            im.load()
            return np.array(im, dtype=np.uint8)
    except CodecError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, PILImage.DecompressionBombError) as exc:
        raise CodecError(f"{what}: cannot decode as PNG ({_reason(exc)})") from None
