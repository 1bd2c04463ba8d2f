"""sensor_msgs/Image <-> numpy, matching cv_bridge (``imgmsg_to_cv2`` / ``cv2_to_imgmsg`` passthrough).

Pure Python/numpy: works on any object with the Image fields (height, width, encoding,
is_bigendian, step, data), so it is unit-testable without a ROS graph. Like cv_bridge:
single-channel images come back as ``(H, W)``, multi-channel as ``(H, W, C)``; rows may be
padded (``step >= width * pixel bytes``); big-endian multi-byte data is byte-swapped to native.
"""
from __future__ import annotations

import re
import struct
import sys

import numpy as np

from vidseg_ros.core.errors import InputError


class ConversionError(InputError):
    """An Image message that cannot be converted (encoding, size, step, data)."""


# Named encodings (sensor_msgs/image_encodings.hpp) -> (dtype, channels).
_NAMED = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4), 'bgra8': (np.uint8, 4),
    'mono8': (np.uint8, 1), 'mono16': (np.uint16, 1),
    'rgb16': (np.uint16, 3), 'bgr16': (np.uint16, 3), 'rgba16': (np.uint16, 4), 'bgra16': (np.uint16, 4),
}
_DEPTHS = {'8U': np.uint8, '8S': np.int8, '16U': np.uint16, '16S': np.int16,
           '32S': np.int32, '32F': np.float32, '64F': np.float64}
_GENERIC = re.compile(r'^(8U|8S|16U|16S|32S|32F|64F)C(?:(\d+)|\((\d+)\))$')
_CV_CN_MAX = 512


def encoding_info(encoding: str) -> tuple[np.dtype, int]:
    """(dtype, channels) of an encoding such as ``rgb8``, ``32FC2``, ``8UC(20)``."""
    if encoding in _NAMED:
        dt, ch = _NAMED[encoding]
        return np.dtype(dt), ch
    m = _GENERIC.match(encoding or '')
    if m:
        ch = int(m.group(2) or m.group(3))
        if 1 <= ch <= _CV_CN_MAX:
            return np.dtype(_DEPTHS[m.group(1)]), ch
    raise ConversionError(f'unsupported image encoding {encoding!r}')


def generic_encoding(dtype, channels: int) -> str:
    """The ``<depth>C<n>`` encoding of a dtype/channel count (cv_bridge passthrough naming)."""
    dt = np.dtype(dtype)
    for depth, d in _DEPTHS.items():
        if np.dtype(d) == dt.newbyteorder('='):
            return f'{depth}C{channels}' if channels <= 4 else f'{depth}C({channels})'
    raise ConversionError(f'unsupported array dtype {dt} for an Image message')


def check_image(msg, named_only: bool = False) -> tuple:
    """Validate an Image message's layout without decoding it: (dtype, channels, row bytes).

    Raises ConversionError naming the problem: unsupported encoding, zero size, ``step`` smaller than
    ``width * pixel bytes`` (larger = row padding, allowed), data shorter than ``step * height``.
    ``named_only``: accept only the camera encodings (rgb8, bgr8, mono8, ... and 16-bit forms).
    """
    if named_only and msg.encoding not in _NAMED:
        raise ConversionError(f'camera image encoding {msg.encoding!r} is not supported '
                              f'(expected one of {", ".join(_NAMED)})')
    dtype, ch = encoding_info(msg.encoding)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ConversionError(f'empty {msg.encoding} image ({w}x{h})')
    row = w * ch * dtype.itemsize
    if step < row:
        raise ConversionError(f'{msg.encoding} image {w}x{h}: step {step} < width*pixel bytes {row}')
    n = len(msg.data)
    if n < step * h:
        raise ConversionError(f'{msg.encoding} image {w}x{h} (step {step}): data has {n} bytes, '
                              f'expected {step * h}')
    return dtype, ch, row


def image_to_ndarray(msg) -> np.ndarray:
    """Decode an Image message like ``cv_bridge.imgmsg_to_cv2(msg, 'passthrough')``: a view of the
    message's bytes when its rows are packed (read-only for bytes / :class:`RawImage` data), else a copy."""
    dtype, ch, row = check_image(msg)
    h, step = int(msg.height), int(msg.step)
    w = int(msg.width)
    data = msg.data
    buf = (np.asarray(data, dtype=np.uint8).ravel() if isinstance(data, (list, tuple))
           else np.frombuffer(data, dtype=np.uint8))
    need = step * h
    rows = buf[:need].reshape(h, step)[:, :row]
    arr = np.ascontiguousarray(rows).view(dtype).reshape((h, w) if ch == 1 else (h, w, ch))
    if dtype.itemsize > 1 and bool(msg.is_bigendian) != (sys.byteorder == 'big'):
        arr = arr.byteswap()
    return arr


def ndarray_to_image(arr: np.ndarray, encoding: str = 'passthrough', header=None):
    """Build a sensor_msgs/Image like ``cv_bridge.cv2_to_imgmsg`` (packed rows, native byte order)."""
    from sensor_msgs.msg import Image

    arr = np.asarray(arr)
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConversionError(f'cannot make an Image from an array of shape {arr.shape}')
    ch = 1 if arr.ndim == 2 else arr.shape[2]
    if encoding == 'passthrough':
        encoding = generic_encoding(arr.dtype, ch)
    dtype, want_ch = encoding_info(encoding)
    if arr.dtype.newbyteorder('=') != dtype or want_ch != ch:
        raise ConversionError(f'encoding {encoding} needs {dtype} x{want_ch} channels, '
                              f'array is {arr.dtype} x{ch}')
    arr = np.ascontiguousarray(arr)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = arr.dtype.byteorder == '>' or (arr.dtype.byteorder == '=' and sys.byteorder == 'big')
    msg.step = int(msg.width * ch * arr.dtype.itemsize)
    msg.data = arr.tobytes()
    return msg


def image_to_rgb(msg) -> np.ndarray:
    """Camera Image (rgb8, bgr8, rgba8, bgra8, mono8, or their 16-bit forms) -> (H, W, 3) uint8 RGB."""
    enc = msg.encoding
    if enc not in _NAMED:
        raise ConversionError(f'camera image encoding {enc!r} is not supported '
                              f'(expected one of {", ".join(_NAMED)})')
    arr = image_to_ndarray(msg)
    if arr.dtype == np.uint16:  # cv_bridge scales 16 -> 8 bit by 255/65535
        arr = np.round(arr.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if enc.startswith('bgr'):
        arr = arr[:, :, 2::-1]
    else:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def rgb_to_image(rgb: np.ndarray, header=None):
    """(H, W, 3) uint8 RGB -> rgb8 Image."""
    return ndarray_to_image(rgb, 'rgb8', header)


_DECODED = {(np.dtype(np.uint8), 1): 'mono8', (np.dtype(np.uint8), 3): 'bgr8', (np.dtype(np.uint8), 4): 'bgra8',
            (np.dtype(np.uint16), 1): 'mono16', (np.dtype(np.uint16), 3): 'bgr16', (np.dtype(np.uint16), 4): 'bgra16'}


def compressed_to_image(fmt: str, data, header=None):
    """A sensor_msgs/CompressedImage's ``format`` and ``data`` (JPEG / PNG bytes) -> an Image, decoded as
    image_transport's ``compressed`` plugin decodes it (OpenCV: colour as bgr8 / bgr16, grey as mono8 /
    mono16, alpha kept); ConversionError naming the format when the bytes do not decode."""
    import cv2
    buf = np.frombuffer(bytes(data), np.uint8)   # bytes, a list or a uint8 array (rclpy / rosbags messages)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if arr is None:
        raise ConversionError(f'cannot decode CompressedImage (format {fmt!r}, {buf.size} bytes)')
    enc = _DECODED.get((arr.dtype, 1 if arr.ndim == 2 else arr.shape[2]))
    if enc is None:
        raise ConversionError(f'CompressedImage (format {fmt!r}) decodes to {arr.dtype} x {arr.shape}: '
                              'no image encoding for it')
    return ndarray_to_image(np.ascontiguousarray(arr), enc, header)


def empty_image(encoding: str, header=None):
    """A 0x0 Image (used on /vidseg/flow for 'no predecessor frame')."""
    from sensor_msgs.msg import Image

    msg = Image()
    if header is not None:
        msg.header = header
    msg.encoding = encoding
    return msg


class RawImage:
    """The fields of a sensor_msgs/Image read from its serialized (CDR) form, ``data`` a zero-copy
    memoryview of the message bytes (see :func:`image_from_cdr`). Works with every function here."""

    __slots__ = ('header', 'height', 'width', 'encoding', 'is_bigendian', 'step', 'data')

    def __init__(self, header, height, width, encoding, is_bigendian, step, data):
        self.header, self.height, self.width = header, height, width
        self.encoding, self.is_bigendian, self.step, self.data = encoding, is_bigendian, step, data


_CDR_LE = b'\x00\x01'   # encapsulation: plain CDR, little endian (what rmw_fastrtps / cyclonedds write)


def _cdr_string(buf, off):
    (n,) = struct.unpack_from('<I', buf, off)
    off += 4
    if n and buf[off + n - 1] != 0:
        raise ValueError('string without terminator')
    return bytes(buf[off:off + max(n - 1, 0)]).decode(), off + n


def image_from_cdr(raw: bytes):
    """A serialized sensor_msgs/Image (``create_subscription(..., raw=True)``) -> :class:`RawImage`
    without copying or converting the pixel data (the nodes that only need the header, size and a view
    of the bytes skip rclpy's per-message conversion). Other encapsulations, or bytes that do not parse,
    go through ``rclpy.serialization.deserialize_message`` (an Image message); ConversionError if that
    fails too."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header
    buf = memoryview(raw)
    try:
        if bytes(buf[:2]) != _CDR_LE:
            raise ValueError('encapsulation')
        align4 = lambda o: 4 + ((o - 4 + 3) & ~3)  # noqa: E731  (alignment counts from the body start)
        sec, nanosec = struct.unpack_from('<iI', buf, 4)
        frame_id, off = _cdr_string(buf, 12)
        height, width = struct.unpack_from('<II', buf, align4(off))
        encoding, off = _cdr_string(buf, align4(off) + 8)
        is_bigendian = buf[off]
        step, n = struct.unpack_from('<II', buf, align4(off + 1))
        off = align4(off + 1) + 8
        if off + n > len(buf):
            raise ValueError('truncated data')
        data = buf[off:off + n]
    except (ValueError, struct.error, IndexError, UnicodeDecodeError):
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image
        try:
            return deserialize_message(bytes(raw), Image)
        except Exception as e:  # noqa: BLE001  (rclpy raises its own RMWError)
            raise ConversionError(f'cannot deserialize an Image message ({len(raw)} bytes): {e}') from None
    return RawImage(Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id), height, width, encoding,
                    is_bigendian, step, data)


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds (the core's frame id)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))
