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
    (dict(encoding='nv24'), 'unsupported image encoding'),
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


def _bt601_uyvy(rgb):
    """(H, W, 3) RGB -> packed UYVY bytes (BT.601 video range, chroma averaged over pixel pairs), the way
    YUV cameras deliver it; and the YUYV (yuv422_yuy2) packing of the same samples."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    u, v = (cb[:, 0::2] + cb[:, 1::2]) / 2, (cr[:, 0::2] + cr[:, 1::2]) / 2
    uyvy = np.zeros(rgb.shape[:2] + (2,), np.uint8)
    uyvy[:, 0::2, 0], uyvy[:, 1::2, 0], uyvy[..., 1] = np.round(u), np.round(v), np.round(y)
    yuy2 = np.zeros_like(uyvy)
    yuy2[..., 0], yuy2[:, 0::2, 1], yuy2[:, 1::2, 1] = np.round(y), np.round(u), np.round(v)
    return uyvy, yuy2


def test_yuv422_and_bayer_camera_images_decode_like_cv_bridge():
    """USB (YUV 4:2:2) and machine-vision (Bayer) cameras: yuv422 (UYVY) and yuv422_yuy2 (YUYV) decode with
    BT.601 video range, the 8-bit Bayer patterns demosaic with cv_bridge's pattern codes (the sensor's RGGB
    is OpenCV's BayerBG). Each is checked against the colours it was made from; the wrong packing or pattern
    would be far off. The offline bag reader decodes them the same way (core.image_msg)."""
    import cv2
    from vidseg_ros.core.io import image_msg_to_rgb
    h, w = 16, 24
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = cv2.GaussianBlur(np.dstack([(40 + 8 * xx) % 256, (60 + 10 * yy) % 256,
                                      np.full((h, w), 120)]).astype(np.uint8), (5, 5), 2)
    uyvy, yuy2 = _bt601_uyvy(rgb)
    for enc, packed in (('yuv422', uyvy), ('yuv422_yuy2', yuy2)):
        out = image_to_rgb(_msg(packed, enc))
        assert out.shape == (h, w, 3) and np.abs(out.astype(int) - rgb).max() <= 5, enc
        np.testing.assert_array_equal(image_msg_to_rgb(enc, h, w, w * 2, packed.tobytes()), out)
    assert np.abs(image_to_rgb(_msg(uyvy, 'yuv422_yuy2')).astype(int) - rgb).mean() > 20   # swapped packing
    with pytest.raises(ConversionError, match='the width must be even'):
        image_to_rgb(_msg(uyvy[:, :-1], 'yuv422'))
    mosaic = np.zeros((h, w), np.uint8)                    # an RGGB sensor: R G / G B
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    errs = {enc: np.abs(image_to_rgb(_msg(mosaic, enc))[2:-2, 2:-2].astype(int) - rgb[2:-2, 2:-2]).mean()
            for enc in ('bayer_rggb8', 'bayer_bggr8', 'bayer_gbrg8', 'bayer_grbg8')}
    assert errs['bayer_rggb8'] < 1 and min(v for k, v in errs.items() if k != 'bayer_rggb8') > 10, errs


def _bt601_nv12(rgb, pad=0):
    """(H, W, 3) RGB -> nv12 and nv21 message payloads (BT.601 video range, chroma averaged over 2x2
    blocks): the Y plane's H rows, then the chroma plane's H/2 rows (U V pairs for nv12, V U for nv21),
    every row ``W + pad`` bytes, the layout rviz and the GStreamer bridges use."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    h, w = y.shape
    u, v = (c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) for c in (cb, cr))
    out = []
    for first, second in ((u, v), (v, u)):
        chroma = np.zeros((h // 2, w), np.float64)
        chroma[:, 0::2], chroma[:, 1::2] = first, second
        planes = np.round(np.concatenate([y, chroma])).astype(np.uint8)
        planes = np.concatenate([planes, np.full((planes.shape[0], pad), 0xAB, np.uint8)], axis=1)
        out.append(planes)
    return out


def test_nv12_nv21_yuv_aliases_and_16bit_bayer_decode_like_cv_bridge():
    """Jetson / GStreamer cameras publish semi-planar nv12 / nv21 (Y plane, then the chroma plane: height
    * 3/2 rows of ``step`` bytes); Kilted names the packed forms uyvy / yuyv (yuv422 / yuv422_yuy2 are
    deprecated aliases); machine-vision cameras also send 16-bit Bayer. Each decodes to the colours it was
    made from, with row padding too; the swapped chroma order is far off; an odd height or short data is
    a clear error. The offline bag reader decodes them the same way."""
    from vidseg_ros.core.io import image_msg_to_rgb
    h, w = 16, 24
    yy, xx = np.mgrid[0:h, 0:w]
    import cv2
    rgb = cv2.GaussianBlur(np.dstack([(40 + 8 * xx) % 256, (60 + 10 * yy) % 256,
                                      np.full((h, w), 120)]).astype(np.uint8), (7, 7), 3)
    for pad in (0, 8):
        nv12, nv21 = _bt601_nv12(rgb, pad)
        for enc, planes in (('nv12', nv12), ('nv21', nv21)):
            msg = SimpleNamespace(height=h, width=w, encoding=enc, is_bigendian=0, step=w + pad,
                                  data=planes.tobytes())
            out = image_to_rgb(msg)
            err = np.abs(out.astype(int) - rgb)          # chroma shared by 2x2 pixels: small local errors
            assert out.shape == (h, w, 3) and err.mean() < 4 and err.max() <= 12, (enc, pad, err.mean(), err.max())
            np.testing.assert_array_equal(image_msg_to_rgb(enc, h, w, w + pad, planes.tobytes()), out)
            assert image_to_ndarray(msg).shape == (h * 3 // 2, w)        # as OpenCV holds it
        swapped = SimpleNamespace(height=h, width=w, encoding='nv21', is_bigendian=0, step=w + pad,
                                  data=nv12.tobytes())
        assert np.abs(image_to_rgb(swapped).astype(int) - rgb).mean() > 20
    with pytest.raises(ConversionError, match='data has 384 bytes, expected 576'):      # the Y plane only
        image_to_rgb(SimpleNamespace(height=h, width=w, encoding='nv12', is_bigendian=0, step=w,
                                     data=nv12[:h, :w].tobytes()))
    with pytest.raises(ConversionError, match='the height must be even'):
        image_to_rgb(SimpleNamespace(height=h - 1, width=w, encoding='nv12', is_bigendian=0, step=w,
                                     data=bytes(w * h * 2)))
    uyvy, yuy2 = _bt601_uyvy(rgb)
    np.testing.assert_array_equal(image_to_rgb(_msg(uyvy, 'uyvy')), image_to_rgb(_msg(uyvy, 'yuv422')))
    np.testing.assert_array_equal(image_to_rgb(_msg(yuy2, 'yuyv')), image_to_rgb(_msg(yuy2, 'yuv422_yuy2')))
    mosaic = np.zeros((h, w), np.uint16)                   # an RGGB sensor with 16-bit samples
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    mosaic16 = mosaic * 257                                # 8-bit values at full 16-bit scale
    for big in (False, True):
        errs = {enc: np.abs(image_to_rgb(_msg(mosaic16, enc, bigendian=big))[2:-2, 2:-2].astype(int)
                            - rgb[2:-2, 2:-2]).mean()
                for enc in ('bayer_rggb16', 'bayer_bggr16', 'bayer_gbrg16', 'bayer_grbg16')}
        assert errs['bayer_rggb16'] < 1 and min(v for k, v in errs.items() if k != 'bayer_rggb16') > 10, errs
    eight = image_to_rgb(_msg(mosaic.astype(np.uint8), 'bayer_rggb8')).astype(int)
    assert np.abs(image_to_rgb(_msg(mosaic16, 'bayer_rggb16')).astype(int) - eight).max() <= 1
