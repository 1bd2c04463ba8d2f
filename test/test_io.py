"""Frame sources (folder, video, rosbag2 sqlite3/mcap), ground-truth readers and writers."""
import json

import cv2
import numpy as np
import pytest

from vidseg_ros.core.errors import InputError
from vidseg_ros.core.io import (LabelWriter, OverlayVideoWriter, image_msg_to_rgb, open_source, read_label_png,
                                write_json)


def _frames(n=5, h=48, w=64):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _save_rgb(path, rgb):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_image_folder(tmp_path):
    frames = _frames(3)
    for name, f in zip(['b_002.png', 'a_001.png', 'c_003.ppm'], frames):
        _save_rgb(tmp_path / name, f)
    (tmp_path / 'notes.txt').write_text('x')
    src = open_source(tmp_path, fps=10)
    assert len(src) == 3 and src.fps == 10
    got = list(src)
    assert [f.stem for f in got] == ['a_001', 'b_002', 'c_003']
    np.testing.assert_array_equal(got[0].rgb, frames[1])  # RGB order preserved (lossless png)
    np.testing.assert_array_equal(got[2].rgb, frames[2])
    assert got[1].index == 1 and got[1].stamp_s == pytest.approx(0.1)
    single = open_source(tmp_path / 'a_001.png')
    assert len(single) == 1 and next(iter(single)).stem == 'a_001'


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match='not found'):
        open_source(tmp_path / 'missing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(InputError, match='no images'):
        open_source(tmp_path / 'empty')
    (tmp_path / 'bad.png').write_bytes(b'not a png')
    with pytest.raises(InputError, match='cannot read image'):
        open_source(tmp_path / 'bad.png')
    (tmp_path / 'x.gif').write_bytes(b'GIF89a')
    with pytest.raises(InputError, match='unsupported input type'):
        open_source(tmp_path / 'x.gif')
    (tmp_path / 'v.mp4').write_bytes(b'\0' * 100)
    with pytest.raises(InputError):
        open_source(tmp_path / 'v.mp4')


def test_video_roundtrip_and_overlay_writer(tmp_path):
    frames = _frames(6, 64, 96)
    labels = np.zeros((32, 48), np.uint8)
    labels[:, 24:] = 13
    labels[:4] = 255
    path = tmp_path / 'out' / 'overlay.mp4'
    with OverlayVideoWriter(path, 12.0, 'cityscapes', alpha=0.5) as vw:
        for f in frames:
            vw.write(f, labels)
    assert vw.count == 6 and vw.path.is_file() and vw.path.stat().st_size > 0
    src = open_source(vw.path)
    assert src.fps == pytest.approx(12.0, abs=0.1) and len(src) == 6
    got = list(src)
    assert len(got) == 6 and got[0].stem == '000000' and got[5].stem == '000005'
    assert got[0].rgb.shape == (64, 96, 3) and got[0].rgb.dtype == np.uint8
    assert got[3].stamp_s == pytest.approx(3 / 12.0, abs=1e-3)


def test_rgb_channel_order_in_video(tmp_path):
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 220
    with OverlayVideoWriter(tmp_path / 'r.mp4', 5, 'cityscapes') as vw:
        vw.write(red, None)
        vw.write(red, None)
    rgb = next(iter(open_source(vw.path))).rgb
    assert rgb[..., 0].mean() > 150 and rgb[..., 2].mean() < 60


def test_label_png_formats_and_writer(tmp_path):
    lab = np.array([[7, 26, 0], [33, 11, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / 'l.png'), lab)
    np.testing.assert_array_equal(read_label_png(tmp_path / 'l.png', 'trainids'), lab)
    np.testing.assert_array_equal(read_label_png(tmp_path / 'l.png', 'labelids'),
                                  [[0, 13, 255], [18, 2, 255]])
    cam = np.array([[0, 10, 11]], np.uint8)
    cv2.imwrite(str(tmp_path / 'c.png'), cam)
    np.testing.assert_array_equal(read_label_png(tmp_path / 'c.png', 'camvid'), [[0, 10, 255]])
    with pytest.raises(InputError):
        read_label_png(tmp_path / 'l.png', 'rgb')
    with pytest.raises(InputError):
        read_label_png(tmp_path / 'nope.png')
    cv2.imwrite(str(tmp_path / 'col.png'), np.dstack([lab, lab + 1, lab]))
    with pytest.raises(InputError, match='single-channel'):
        read_label_png(tmp_path / 'col.png')
    w = LabelWriter(tmp_path / 'labels', class_set='cityscapes', color=True)
    p = w.write('frame_01', lab)
    np.testing.assert_array_equal(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), lab)
    assert (tmp_path / 'labels' / 'color' / 'frame_01.png').is_file()


def test_write_json(tmp_path):
    p = write_json(tmp_path / 'sub' / 'r.json', {'a': np.float32(1.5), 'b': np.arange(3), 'c': float('nan'),
                                                  1: (np.int64(2),)})
    assert json.loads(p.read_text()) == {'a': 1.5, 'b': [0, 1, 2], 'c': None, '1': [2]}


def test_image_msg_encodings():
    rgb = np.random.default_rng(1).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    pad = lambda a, step: np.pad(a.reshape(a.shape[0], -1), ((0, 0), (0, step - a.shape[1] * a[0, 0].size)))
    np.testing.assert_array_equal(image_msg_to_rgb('rgb8', 4, 5, 16, pad(rgb, 16).tobytes()), rgb)
    np.testing.assert_array_equal(image_msg_to_rgb('bgr8', 4, 5, 15, rgb[..., ::-1].tobytes()), rgb)
    rgba = np.dstack([rgb, np.full((4, 5), 9, np.uint8)])
    np.testing.assert_array_equal(image_msg_to_rgb('rgba8', 4, 5, 20, rgba.tobytes()), rgb)
    bgra = np.dstack([rgb[..., ::-1], np.full((4, 5), 9, np.uint8)])
    np.testing.assert_array_equal(image_msg_to_rgb('bgra8', 4, 5, 20, bgra.tobytes()), rgb)
    g = rgb[..., 0]
    np.testing.assert_array_equal(image_msg_to_rgb('mono8', 4, 5, 5, g.tobytes())[..., 1], g)
    # 16 bit: scaled by 255/65535 as cv_bridge (and the ROS nodes) do; big-endian data swapped
    g16 = g.astype(np.uint16) * 256 + 77
    want = np.round(g16 * (255 / 65535)).astype(np.uint8)
    np.testing.assert_array_equal(image_msg_to_rgb('mono16', 4, 5, 10, g16.astype('<u2').tobytes())[..., 2], want)
    np.testing.assert_array_equal(image_msg_to_rgb('mono16', 4, 5, 10, g16.astype('>u2').tobytes(), True)[..., 0],
                                  want)
    np.testing.assert_array_equal(image_msg_to_rgb('8UC3', 4, 5, 15, rgb[..., ::-1].tobytes()), rgb)  # = bgr8
    with pytest.raises(InputError, match="camera image encoding 'nv24' is not supported"):
        image_msg_to_rgb('nv24', 4, 5, 10, b'\0' * 40)
    with pytest.raises(InputError, match='data has 10 bytes, expected 60'):
        image_msg_to_rgb('rgb8', 4, 5, 15, b'\0' * 10)


def _write_bag(path, storage, frames, topic='/camera/image_raw', encoding='bgr8', extra_string_topic=True):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    ts = get_typestore(Stores.ROS2_JAZZY)
    Image = ts.types['sensor_msgs/msg/Image']
    Header = ts.types['std_msgs/msg/Header']
    Time = ts.types['builtin_interfaces/msg/Time']
    String = ts.types['std_msgs/msg/String']
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as w:
        if extra_string_topic:
            cs = w.add_connection('/chatter', String.__msgtype__, typestore=ts)
            w.write(cs, 1, ts.serialize_cdr(String(data='hi'), String.__msgtype__))
        if frames is not None:
            c = w.add_connection(topic, Image.__msgtype__, typestore=ts)
            for i, f in enumerate(frames):
                stamp_ns = 1_000_000_000 + i * 100_000_000
                data = f[..., ::-1] if encoding == 'bgr8' else f
                msg = Image(header=Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
                                          frame_id='cam'),
                            height=f.shape[0], width=f.shape[1], encoding=encoding, is_bigendian=0,
                            step=f.shape[1] * 3, data=np.ascontiguousarray(data).reshape(-1))
                w.write(c, stamp_ns + 5, ts.serialize_cdr(msg, Image.__msgtype__))


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_rosbag_source(tmp_path, storage):
    frames = _frames(4, 24, 32)
    bag = tmp_path / f'bag_{storage}'
    _write_bag(bag, storage, frames)
    src = open_source(bag)
    assert src.topic == '/camera/image_raw' and len(src) == 4
    assert src.fps == pytest.approx(10.0, rel=1e-3)
    got = list(src)
    assert [f.stem for f in got] == ['000000', '000001', '000002', '000003']
    for f, ref in zip(got, frames):
        np.testing.assert_array_equal(f.rgb, ref)
    assert got[2].stamp_s == pytest.approx(1.2)
    # the storage file alone opens too
    ext = '.mcap' if storage == 'mcap' else '.db3'
    files = sorted(bag.glob(f'*{ext}'))
    assert files
    assert len(open_source(files[0], topic='/camera/image_raw')) == 4
    with pytest.raises(InputError, match='not in bag'):
        open_source(bag, topic='/nope')
    with pytest.raises(InputError, match='not sensor_msgs'):
        open_source(bag, topic='/chatter')


def test_rosbag_without_images(tmp_path):
    bag = tmp_path / 'noimg'
    _write_bag(bag, 'mcap', None)
    with pytest.raises(InputError, match='no sensor_msgs/msg/Image topic'):
        open_source(bag)


def test_unreadable_frames_raise_or_come_with_their_error(tmp_path):
    """A source raises on an unreadable frame, naming it; with skip_bad it yields the frame with rgb None
    and the error instead, and goes on (folders and bags)."""
    folder = tmp_path / 'f'
    folder.mkdir()
    for i, f in enumerate(_frames(3, 24, 32)):
        cv2.imwrite(str(folder / f'{i}.png'), f)
    (folder / '1.png').write_bytes(b'junk')
    with pytest.raises(InputError, match='cannot read image .*1.png'):
        list(open_source(folder))
    got = list(open_source(folder, skip_bad=True))
    assert [(f.stem, f.rgb is None) for f in got] == [('0', False), ('1', True), ('2', False)]
    assert got[1].error.startswith('cannot read image') and got[0].error is None
    bag = tmp_path / 'bag'
    _write_bag(bag, 'mcap', _frames(2, 24, 32), encoding='nv24')     # (yuv422 is decoded since session 18)
    with pytest.raises(InputError, match="message #0 on /camera/image_raw: camera image encoding 'nv24' is not"):
        list(open_source(bag))
    got = list(open_source(bag, skip_bad=True))
    assert [f.stem for f in got] == ['000000', '000001'] and all(f.rgb is None for f in got)
    assert "camera image encoding 'nv24' is not supported" in got[1].error
    assert got[1].stamp_s == pytest.approx(1.1, abs=1e-6)
