"""sensor_msgs/CompressedImage (image_transport's ``compressed`` transport, JPEG or PNG) -> numpy RGB, with OpenCV.

The ``format`` field follows image_transport: ``"<original encoding>; <jpeg|png> compressed <pixel order>"``, e.g.
``"rgb8; jpeg compressed bgr8"`` or ``"mono8; png compressed "``; publishers older than that write only ``"jpeg"``
or ``"png"``. OpenCV decodes to BGR; image_transport's publisher hands OpenCV BGR pixels (``compressed bgr8``), so
the decoded array is turned into RGB, unless the format says the compressed pixels were RGB (``compressed rgb8``).

Everything is checked before OpenCV allocates anything: the format string, that the payload's magic bytes are the
codec the format names, the image size from the PNG/JPEG header (so a few hundred bytes that claim 100000 x 100000
pixels are refused instead of decoded), and the end marker (a JPEG cut short still decodes, grey at the bottom, with
only a libjpeg warning; a missing end marker is how such a cut shows). Every problem raises
:class:`~scanssc_ros.ros.image_decode.ImageDecodeError`, the one exception type the raw decoders raise too.

Not covered: damage inside the compressed data of a file whose headers and end marker are intact (libjpeg decodes
what it can and only warns), 16-bit images, and ``compressedDepth`` (depth images stay raw ``sensor_msgs/Image``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from scanssc_ros.ros.image_decode import ImageDecodeError, _buffer

# original encodings whose compressed form decodes to the same 8-bit colours
COLOR_ORIGINALS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
_CODECS = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_MAGIC = b"\xff\xd8"
# start-of-frame markers carry the image size; C4 (DHT), C8 (reserved) and CC (DAC) share the range but do not
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_FORMAT_HINT = ("expected e.g. 'rgb8; jpeg compressed bgr8' or 'bgr8; png compressed bgr8' (image_transport), "
                "or 'jpeg' / 'png'")


@dataclass(frozen=True)
class CompressedHeader:
    codec: str  # "jpeg" or "png"
    width: int
    height: int
    rgb_order: bool  # the decoded pixels are R, G, B already (the publisher compressed an RGB buffer as is)


def is_compressed(msg: Any) -> bool:
    """A CompressedImage-like message (``format`` and ``data``, no ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def parse_format(fmt: Any) -> Tuple[str, bool]:
    """image_transport format string -> (codec, rgb_order)."""
    if not isinstance(fmt, str):
        raise ImageDecodeError(f"compressed image format {fmt!r} is not a string")
    text = fmt.strip()
    if ";" not in text:
        codec = _CODECS.get(text)
        if codec is None:
            raise ImageDecodeError(f"unsupported compressed image format {fmt!r}; {_FORMAT_HINT}")
        return codec, False
    original, rest = (part.strip() for part in text.split(";", 1))
    words = rest.split()
    if words and words[0] == "compressedDepth":
        raise ImageDecodeError(f"compressed image format {fmt!r} is compressedDepth (a depth image); colour "
                               "topics take jpeg or png, and depth images must be sent raw")
    if not 2 <= len(words) <= 3 or words[0] not in _CODECS or words[1] != "compressed":
        raise ImageDecodeError(f"unsupported compressed image format {fmt!r}; {_FORMAT_HINT}")
    if original not in COLOR_ORIGINALS:
        raise ImageDecodeError(f"compressed image of encoding {original!r} (format {fmt!r}) is not supported; "
                               f"supported: {', '.join(COLOR_ORIGINALS)}")
    order = words[2] if len(words) == 3 else ""
    return _CODECS[words[0]], order.startswith("rgb")


def _png_size(data: bytes) -> Tuple[int, int]:
    # the IHDR chunk must come first: 4-byte length 13, "IHDR", width, height, bit depth, colour type, ...
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageDecodeError(f"PNG data has no IHDR header ({len(data)} bytes)")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bit_depth = data[24]
    if bit_depth > 8:
        raise ImageDecodeError(f"PNG with {bit_depth}-bit samples is not supported (8-bit images only)")
    if not data.endswith(_PNG_IEND):
        raise ImageDecodeError(f"PNG data is truncated: it does not end with the IEND chunk ({len(data)} bytes)")
    return width, height


def _jpeg_size(data: bytes) -> Tuple[int, int]:
    n, i = len(data), 2
    truncated = ImageDecodeError(f"JPEG data is truncated: no frame header in its {n} bytes")
    while True:
        if i >= n:
            raise truncated
        if data[i] != 0xFF:
            raise ImageDecodeError(f"JPEG data is corrupt: expected a marker at byte {i}, found 0x{data[i]:02x}")
        while i < n and data[i] == 0xFF:  # fill bytes may precede a marker
            i += 1
        if i >= n:
            raise truncated
        marker = data[i]
        i += 1
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # stand-alone markers have no length
            continue
        if marker in (0xD9, 0xDA):
            raise ImageDecodeError("JPEG data is corrupt: the image data starts before a frame header")
        if i + 2 > n:
            raise truncated
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2:
            raise ImageDecodeError(f"JPEG data is corrupt: segment 0x{marker:02x} at byte {i} has length {length}")
        if marker in _JPEG_SOF:
            if i + 8 > n:
                raise ImageDecodeError(f"JPEG data is truncated inside its frame header ({n} bytes)")
            precision, components = data[i + 2], data[i + 7]
            height, width = int.from_bytes(data[i + 3:i + 5], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            if precision != 8:
                raise ImageDecodeError(f"JPEG with {precision}-bit samples is not supported (8-bit images only)")
            if components not in (1, 3):
                raise ImageDecodeError(f"JPEG with {components} colour components is not supported (1 or 3)")
            if height == 0:
                raise ImageDecodeError("JPEG frame header gives height 0 (a height set later by a DNL marker is "
                                       "not supported)")
            break
        i += length
    # some cameras pad frames with zeros after the end-of-image marker
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageDecodeError(f"JPEG data is truncated: the end-of-image marker is missing ({n} bytes)")
    return width, height


def compressed_header(msg: Any) -> CompressedHeader:
    """Check the format string against the payload and read the image size, without decoding any pixels."""
    codec, rgb_order = parse_format(msg.format)
    data = _buffer(msg.data).tobytes()
    if not data:
        raise ImageDecodeError("compressed image has no data")
    if data.startswith(_PNG_MAGIC):
        found = "png"
    elif data.startswith(_JPEG_MAGIC):
        found = "jpeg"
    else:
        raise ImageDecodeError(f"compressed image data is neither JPEG nor PNG (first bytes: {data[:8].hex(' ')})")
    if found != codec:
        raise ImageDecodeError(f"compressed image format {msg.format!r} says {codec} but the data is {found}")
    width, height = _png_size(data) if codec == "png" else _jpeg_size(data)
    return CompressedHeader(codec=codec, width=width, height=height, rgb_order=rgb_order)


def compressed_to_rgb(msg: Any, header: Optional[CompressedHeader] = None) -> np.ndarray:
    """CompressedImage -> (H, W, 3) uint8 RGB. ``header`` from :func:`compressed_header` when the caller already
    checked it (e.g. its size against limits) before paying for the decode."""
    import cv2  # noqa: PLC0415 - only compressed input needs OpenCV here

    header = header or compressed_header(msg)
    # a camera's pixel grid is what its camera_info describes: an EXIF orientation tag must not rotate it
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    buf = _buffer(msg.data)
    try:
        bgr = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        raise ImageDecodeError(f"OpenCV could not decode the {header.codec} data: {str(exc).strip()}") from None
    if bgr is None:
        raise ImageDecodeError(f"OpenCV could not decode the {header.codec} data ({buf.size} bytes): corrupt")
    if bgr.shape[:2] != (header.height, header.width) or bgr.ndim != 3:
        raise ImageDecodeError(f"{header.codec} data decoded to {bgr.shape[1]}x{bgr.shape[0]}, but its header "
                               f"says {header.width}x{header.height}")
    return bgr if header.rgb_order else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
