"""sensor_msgs/Image <-> numpy conversions (cv_bridge semantics), on hand-built messages."""
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from vidseg_ros.core.errors import VidsegError
from vidseg_ros.ros.conversions import (ConversionError, encoding_info, image_to_ndarray, image_to_rgb,
                                        ndarray_to_image, ns_to_stamp, stamp_to_ns)


def _msg(arr, encoding, pad=0, bigendian=False):
    """A hand-built message: rows padded by ``pad`` bytes, data in the requested byte order."""
    arr = np.asarray(arr)
    h, w = arr.shape[:2]
    a = arr.astype(arr.dtype.newbyteorder('>' if bigendian else '<'))
    rows = a.reshape(h, -1).view(np.uint8).reshape(h, -1)
    rows = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    return SimpleNamespace(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
                           step=rows.shape[1], data=rows.tobytes())


RNG = np.random.default_rng(0)


@pytest.mark.parametrize('encoding,dtype,ch', [
    ('rgb8', np.uint8, 3), ('bgr8', np.uint8, 3), ('rgba8', np.uint8, 4), ('bgra8', np.uint8, 4),
    ('mono8', np.uint8, 1), ('mono16', np.uint16, 1), ('8UC1', np.uint8, 1), ('8UC2', np.uint8, 2),
    ('8UC3', np.uint8, 3), ('8UC4', np.uint8, 4), ('8UC(20)', np.uint8, 20), ('16UC(3)', np.uint16, 3),
    ('32FC1', np.float32, 1), ('32FC2', np.float32, 2), ('32FC4', np.float32, 4),
    ('32FC(7)', np.float32, 7), ('64FC(2)', np.float64, 2), ('16SC1', np.int16, 1)])
@pytest.mark.parametrize('pad', [0, 3])
def test_decode_matches_array(encoding, dtype, ch, pad):
    shape = (5, 7) if ch == 1 else (5, 7, ch)
    if np.dtype(dtype).kind == 'f':
        arr = RNG.standard_normal(shape).astype(dtype)
    else:
        arr = RNG.integers(0, np.iinfo(dtype).max, shape).astype(dtype)
    assert encoding_info(encoding) == (np.dtype(dtype), ch)
    out = image_to_ndarray(_msg(arr, encoding, pad=pad))
    assert out.dtype == np.dtype(dtype).newbyteorder('=') and out.shape == shape
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)


def test_bigendian_multibyte_is_swapped_like_cv_bridge():
    arr = RNG.standard_normal((4, 6, 2)).astype(np.float32)
    out = image_to_ndarray(_msg(arr, '32FC2', bigendian=True))
    np.testing.assert_array_equal(out, arr)
    assert out.dtype.isnative
    arr16 = RNG.integers(0, 65535, (3, 3)).astype(np.uint16)
    np.testing.assert_array_equal(image_to_ndarray(_msg(arr16, 'mono16', bigendian=True)), arr16)


@pytest.mark.parametrize('enc,dtype,shape', [
    ('rgb8', np.uint8, (4, 5, 3)), ('mono8', np.uint8, (4, 5)), ('32FC4', np.float32, (3, 2, 4)),
    ('8UC(19)', np.uint8, (3, 4, 19)), ('passthrough', np.float64, (2, 2, 6)), ('mono16', np.uint16, (2, 9))])
def test_roundtrip_through_real_message(enc, dtype, shape):
    from std_msgs.msg import Header
    arr = (RNG.random(shape) * 200).astype(dtype)
    hdr = Header(frame_id='cam', stamp=ns_to_stamp(1_700_000_000_123_456_789))
    msg = ndarray_to_image(arr, enc, hdr)
    assert msg.step == shape[1] * (shape[2] if len(shape) == 3 else 1) * np.dtype(dtype).itemsize
    assert msg.is_bigendian == (sys.byteorder == 'big')
    assert msg.header.frame_id == 'cam' and stamp_to_ns(msg.header.stamp) == 1_700_000_000_123_456_789
    if enc == 'passthrough':
        assert msg.encoding == '64FC(6)'
    np.testing.assert_array_equal(image_to_ndarray(msg), arr)


def test_image_to_rgb_all_camera_encodings():
    rgb = RNG.integers(0, 255, (6, 8, 3)).astype(np.uint8)
    np.testing.assert_array_equal(image_to_rgb(_msg(rgb, 'rgb8', pad=2)), rgb)
    np.testing.assert_array_equal(image_to_rgb(_msg(rgb[:, :, ::-1], 'bgr8')), rgb)
    alpha = np.full((6, 8, 1), 7, np.uint8)
    np.testing.assert_array_equal(image_to_rgb(_msg(np.concatenate([rgb, alpha], 2), 'rgba8')), rgb)
    np.testing.assert_array_equal(image_to_rgb(_msg(np.concatenate([rgb[:, :, ::-1], alpha], 2), 'bgra8')), rgb)
    gray = rgb[:, :, 0]
    out = image_to_rgb(_msg(gray, 'mono8'))
    assert out.shape == (6, 8, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out[:, :, 1], gray)
    g16 = gray.astype(np.uint16) * 257
    np.testing.assert_array_equal(image_to_rgb(_msg(g16, 'mono16'))[:, :, 2], gray)


@pytest.mark.parametrize('mutate,match', [
    (dict(encoding='yuv422_yuy2'), 'unsupported image encoding'),
    (dict(encoding='8UC0'), 'unsupported image encoding'),
    (dict(encoding='32FC(513)'), 'unsupported image encoding'),
    (dict(step=20), 'step 20 < width'),
    (dict(height=0), 'empty'),
    (dict(width=0), 'empty'),
    (dict(data=b'\0' * 10), 'data has 10 bytes, expected 72'),
])
def test_bad_messages_raise_one_line_conversion_error(mutate, match):
    msg = _msg(np.zeros((3, 8, 3), np.uint8), 'rgb8')
    for k, v in mutate.items():
        setattr(msg, k, v)
    with pytest.raises(ConversionError, match=match) as ei:
        image_to_ndarray(msg)
    assert isinstance(ei.value, VidsegError) and '\n' not in str(ei.value)


def test_camera_rejects_non_image_encodings_and_encode_checks_type():
    with pytest.raises(ConversionError, match='camera image encoding'):
        image_to_rgb(_msg(np.zeros((2, 2, 2), np.float32), '32FC2'))
    with pytest.raises(ConversionError, match='needs uint8 x3'):
        ndarray_to_image(np.zeros((2, 2), np.uint8), 'rgb8')
    with pytest.raises(ConversionError, match='shape'):
        ndarray_to_image(np.zeros((0, 2), np.uint8), 'mono8')
    with pytest.raises(ConversionError, match='dtype'):
        ndarray_to_image(np.zeros((2, 2), np.complex64))


@pytest.mark.parametrize('frame_id', ['', 'c', 'ca', 'cam', 'cam0', 'camera_color_left'])
@pytest.mark.parametrize('enc,pad,bigendian', [('rgb8', 0, 0), ('bgr8', 1, 0), ('mono16', 3, 1),
                                               ('8UC(20)', 2, 0), ('32FC4', 0, 1)])
def test_image_from_cdr_reads_the_serialized_message_like_rclpy(frame_id, enc, pad, bigendian):
    """The nodes' camera subscriptions read the serialized message (no conversion of the pixels): every
    field must equal rclpy's deserialisation, whatever the string lengths (CDR alignment)."""
    pytest.importorskip('rclpy')
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    from vidseg_ros.ros.conversions import RawImage, image_from_cdr
    dtype, ch = encoding_info(enc)
    w, h = 5, 3
    row = w * ch * dtype.itemsize + pad
    data = RNG.integers(0, 256, h * row, dtype=np.uint8).tobytes()
    m = Image(header=Header(frame_id=frame_id, stamp=ns_to_stamp(1_700_000_000_987_654_321)), height=h,
              width=w, encoding=enc, is_bigendian=bigendian, step=row, data=data)
    r = image_from_cdr(serialize_message(m))
    assert isinstance(r, RawImage)
    assert r.header == m.header
    assert (r.height, r.width, r.encoding, r.is_bigendian, r.step) == (h, w, enc, bigendian, row)
    assert bytes(r.data) == data
    np.testing.assert_array_equal(image_to_ndarray(r), image_to_ndarray(m))
    with pytest.raises(ConversionError, match='cannot deserialize an Image message'):
        image_from_cdr(b'\x00\x01\x00\x00' + b'\xff' * 9)  # does not parse, rclpy refuses it too


def test_compressed_image_decodes_like_image_transport():
    """CompressedImage bytes -> Image as image_transport's compressed plugin decodes them (OpenCV): colour
    JPEG / PNG as bgr8, grey as mono8, 16-bit grey as mono16; undecodable bytes are a ConversionError."""
    pytest.importorskip('sensor_msgs')
    import cv2
    from std_msgs.msg import Header
    from vidseg_ros.ros.conversions import compressed_to_image
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 255, (24, 32, 3)).astype(np.uint8)
    for ext, arr, enc in (('.png', bgr, 'bgr8'), ('.png', bgr[..., 0], 'mono8'),
                          ('.png', (bgr[..., 0].astype(np.uint16) * 257), 'mono16'), ('.jpg', bgr, 'bgr8')):
        ok, data = cv2.imencode(ext, arr)
        assert ok
        hdr = Header(frame_id='cam')
        hdr.stamp.sec = 7
        msg = compressed_to_image(ext[1:], data.tobytes(), hdr)
        assert msg.encoding == enc and (msg.width, msg.height) == (32, 24) and msg.header.stamp.sec == 7
        want = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        assert np.array_equal(image_to_ndarray(msg), want)
        if enc == 'bgr8':
            assert np.array_equal(image_to_rgb(msg), want[..., ::-1])
        assert np.array_equal(image_to_ndarray(compressed_to_image(ext[1:], data)), want)   # a uint8 array too
    for bad in (b'', b'not a jpeg at all'):
        with pytest.raises(ConversionError, match="cannot decode CompressedImage \\(format 'jpeg'"):
            compressed_to_image('jpeg', bad)
