"""sensor_msgs/Image <-> numpy, matching cv_bridge (``imgmsg_to_cv2`` / ``cv2_to_imgmsg`` passthrough).

Decoding (``image_to_ndarray``, ``image_to_rgb``, ``check_image``, ...) lives in the ROS-free
``core/image_msg.py``, shared with the offline bag reader, and is re-exported here; this module adds
what needs the ROS message types: building Images, CompressedImage decoding, serialized (CDR) camera
messages, stamps. Pure Python/numpy apart from the message classes, so it is unit-testable without a
ROS graph.
"""
from __future__ import annotations

import struct
import sys

import numpy as np

# the decoding side is ROS-free and shared with the offline bag reader (core/io.py)
from vidseg_ros.core.image_msg import (CAMERA_ENCODINGS, ConversionError, check_image, encoding_info,
                                       generic_encoding, image_to_ndarray, image_to_rgb)

__all__ = ['CAMERA_ENCODINGS', 'ConversionError', 'check_image', 'encoding_info', 'generic_encoding',
           'image_to_ndarray', 'image_to_rgb', 'ndarray_to_image', 'rgb_to_image', 'compressed_to_image',
           'empty_image', 'RawImage', 'image_from_cdr', 'stamp_to_ns', 'ns_to_stamp']


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
