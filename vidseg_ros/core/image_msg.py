"""sensor_msgs/Image payloads -> numpy, matching cv_bridge (``imgmsg_to_cv2``); ROS-free.

Works on any object with the Image fields (height, width, encoding, is_bigendian, step, data): rclpy
messages, rosbags messages, ``ros.conversions.RawImage``. So the ROS nodes (``ros/conversions.py``
re-exports these) and the offline bag reader (``core/io.py``) decode camera images the same way. Like
cv_bridge: single-channel images come back as ``(H, W)``, multi-channel as ``(H, W, C)``; rows may be
padded (``step >= width * pixel bytes``); big-endian multi-byte data is byte-swapped to native; 16-bit
images scale to 8 bit by 255/65535. Camera encodings for :func:`image_to_rgb`: rgb8, bgr8, rgba8,
bgra8, mono8 and their 16-bit forms, the packed YUV 4:2:2 forms (uyvy = yuv422, yuyv = yuv422_yuy2),
the semi-planar YUV 4:2:0 forms nv12 and nv21, and the Bayer patterns (bayer_rggb8, bayer_bggr8,
bayer_gbrg8, bayer_grbg8 and their 16-bit forms), converted with OpenCV's codes as cv_bridge converts
them. nv12 / nv21 follow the layout the ROS tools use (rviz's image display, GStreamer bridges):
``height`` and ``width`` are the picture's, the Y plane's ``height`` rows of ``step`` bytes are followed
by the interleaved chroma plane's ``height / 2`` rows of ``step`` bytes. nv24 (4:4:4) is not supported.
"""
from __future__ import annotations

import re
import sys

import numpy as np

from .errors import InputError

__all__ = ['ConversionError', 'encoding_info', 'generic_encoding', 'check_image', 'image_to_ndarray',
           'image_to_rgb', 'CAMERA_ENCODINGS']


class ConversionError(InputError):
    """An Image message that cannot be converted (encoding, size, step, data)."""


# Named encodings (sensor_msgs/image_encodings.hpp) -> (dtype, channels).
_NAMED = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4), 'bgra8': (np.uint8, 4),
    'mono8': (np.uint8, 1), 'mono16': (np.uint16, 1),
    'rgb16': (np.uint16, 3), 'bgr16': (np.uint16, 3), 'rgba16': (np.uint16, 4), 'bgra16': (np.uint16, 4),
    'yuv422': (np.uint8, 2), 'yuv422_yuy2': (np.uint8, 2), 'uyvy': (np.uint8, 2), 'yuyv': (np.uint8, 2),
    'nv12': (np.uint8, 1), 'nv21': (np.uint8, 1),
    'bayer_rggb8': (np.uint8, 1), 'bayer_bggr8': (np.uint8, 1), 'bayer_gbrg8': (np.uint8, 1),
    'bayer_grbg8': (np.uint8, 1),
    'bayer_rggb16': (np.uint16, 1), 'bayer_bggr16': (np.uint16, 1), 'bayer_gbrg16': (np.uint16, 1),
    'bayer_grbg16': (np.uint16, 1),
}
CAMERA_ENCODINGS = tuple(_NAMED)
# semi-planar 4:2:0: the chroma plane adds height / 2 rows of step bytes after the Y plane
_SEMI_PLANAR = ('nv12', 'nv21')
# cv_bridge's conversions (cv_bridge.cpp, getConversionCode), to RGB instead of BGR: OpenCV names a Bayer
# pattern by its second row, so the sensor's RGGB is OpenCV's BayerBG
_TO_RGB = {'yuv422': 'COLOR_YUV2RGB_UYVY', 'uyvy': 'COLOR_YUV2RGB_UYVY',
           'yuv422_yuy2': 'COLOR_YUV2RGB_YUY2', 'yuyv': 'COLOR_YUV2RGB_YUY2',
           'nv12': 'COLOR_YUV2RGB_NV12', 'nv21': 'COLOR_YUV2RGB_NV21'}
for _depth in ('8', '16'):
    _TO_RGB.update({f'bayer_rggb{_depth}': 'COLOR_BayerBG2RGB', f'bayer_bggr{_depth}': 'COLOR_BayerRG2RGB',
                    f'bayer_gbrg{_depth}': 'COLOR_BayerGR2RGB', f'bayer_grbg{_depth}': 'COLOR_BayerGB2RGB'})
_EVEN_WIDTH = ('yuv422', 'yuv422_yuy2', 'uyvy', 'yuyv') + _SEMI_PLANAR
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


def _buffer_rows(encoding: str, height: int) -> int:
    """Rows of ``step`` bytes the data holds: the picture's, plus the chroma plane's for nv12 / nv21."""
    return height + height // 2 if encoding in _SEMI_PLANAR else height


def check_image(msg, named_only: bool = False) -> tuple:
    """Validate an Image message's layout without decoding it: (dtype, channels, row bytes).

    Raises ConversionError naming the problem: unsupported encoding, zero size, ``step`` smaller than
    ``width * pixel bytes`` (larger = row padding, allowed), data shorter than ``step * height`` (than
    ``step * height * 3 / 2`` for nv12 / nv21, whose height must be even).
    ``named_only``: accept only the camera encodings (rgb8, bgr8, mono8, ... and 16-bit forms).
    """
    if named_only and msg.encoding not in _NAMED:
        raise ConversionError(f'camera image encoding {msg.encoding!r} is not supported '
                              f'(expected one of {", ".join(_NAMED)})')
    dtype, ch = encoding_info(msg.encoding)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ConversionError(f'empty {msg.encoding} image ({w}x{h})')
    if msg.encoding in _SEMI_PLANAR and h % 2:
        raise ConversionError(f'{msg.encoding} image {w}x{h}: the height must be even (4:2:0 chroma rows)')
    row = w * ch * dtype.itemsize
    if step < row:
        raise ConversionError(f'{msg.encoding} image {w}x{h}: step {step} < width*pixel bytes {row}')
    n, need = len(msg.data), step * _buffer_rows(msg.encoding, h)
    if n < need:
        raise ConversionError(f'{msg.encoding} image {w}x{h} (step {step}): data has {n} bytes, '
                              f'expected {need}')
    return dtype, ch, row


def image_to_ndarray(msg) -> np.ndarray:
    """Decode an Image message like ``cv_bridge.imgmsg_to_cv2(msg, 'passthrough')``: a view of the
    message's bytes when its rows are packed (read-only for bytes / :class:`RawImage` data), else a copy.
    nv12 / nv21 come back as OpenCV holds them: ``(height * 3 / 2, width)``, the Y plane over the chroma."""
    dtype, ch, row = check_image(msg)
    h, step = _buffer_rows(msg.encoding, int(msg.height)), int(msg.step)
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


def image_to_rgb(msg) -> np.ndarray:
    """Camera Image (``CAMERA_ENCODINGS``: rgb8, bgr8, rgba8, bgra8, mono8, their 16-bit forms, packed
    YUV 4:2:2, nv12 / nv21, 8- and 16-bit Bayer) -> (H, W, 3) uint8 RGB."""
    enc = msg.encoding
    if enc not in _NAMED:
        raise ConversionError(f'camera image encoding {enc!r} is not supported '
                              f'(expected one of {", ".join(_NAMED)})')
    arr = image_to_ndarray(msg)
    if enc in _TO_RGB:
        import cv2
        if enc in _EVEN_WIDTH and int(msg.width) % 2:
            raise ConversionError(f'{enc} image {msg.width}x{msg.height}: the width must be even (pixel pairs)')
        arr = cv2.cvtColor(np.ascontiguousarray(arr), getattr(cv2, _TO_RGB[enc]))
    if arr.dtype == np.uint16:  # cv_bridge scales 16 -> 8 bit by 255/65535
        arr = np.round(arr.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if enc.startswith('bgr'):
        arr = arr[:, :, 2::-1]
    else:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


