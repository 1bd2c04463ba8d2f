"""Frame sources (video file, image folder, single image, rosbag2) and output writers.

Every source yields :class:`Frame` (index, stem, rgb uint8 (H, W, 3), stamp_s). A frame that cannot be
read (a corrupt image file in a folder, an undecodable bag message) raises :class:`InputError`, or, with
``skip_bad=True``, comes as a Frame with ``rgb`` None and ``error`` saying why, so that a caller can go
on with the next frame and report it (``vidseg run`` does). ``len(source)`` works
when the count is known (image folders, bags; videos report the container's frame count), and
``source.fps`` is set when known (video container, bag stamps; folders/images: the ``fps`` argument).
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .classes import ClassSet, camvid_gt_to_ids, colorize, get_class_set, labelid_to_trainid
from .errors import InputError

IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.ppm', '.bmp')
VIDEO_EXTS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg')
BAG_EXTS = ('.mcap', '.db3')


@dataclass
class Frame:
    index: int
    stem: str
    rgb: np.ndarray | None
    stamp_s: float
    error: str | None = None   # skip_bad sources: why this frame could not be read (rgb is None)


def read_image(path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3); 16-bit images are scaled to 8 bit."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f'image not found: {path}')
    if path.suffix.lower() not in IMAGE_EXTS:
        raise InputError(f'unsupported image type {path.suffix!r}: {path} (supported: {", ".join(IMAGE_EXTS)})')
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f'cannot read image (corrupt or not an image): {path}')
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise InputError(f'unsupported image depth {img.dtype}: {path}')
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class FrameSource:
    """Base class: iterable of :class:`Frame`; ``fps`` (float or None), ``len()`` where known."""

    kind = 'source'
    fps: float | None = None
    skip_bad = False

    def __init__(self, path):
        self.path = Path(path)

    def __iter__(self):
        raise NotImplementedError

    def describe(self) -> dict:
        n = None
        try:
            n = len(self)
        except TypeError:
            pass
        return {'kind': self.kind, 'path': str(self.path), 'frames': n, 'fps': self.fps}


class ImageFolderSource(FrameSource):
    """Images of a folder sorted by file name (or one image file); stems are the file stems."""

    kind = 'images'

    def __init__(self, path, fps: float | None = None, files=None):
        super().__init__(path)
        if files is None:
            files = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
            if not files:
                raise InputError(f'no images ({", ".join(IMAGE_EXTS)}) in folder: {self.path}')
        self.files = list(files)
        self.fps = float(fps) if fps else None

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i: int) -> Frame:
        if not -len(self.files) <= i < len(self.files):
            raise IndexError(i)
        i %= len(self.files)
        f = self.files[i]
        stamp = i / self.fps if self.fps else float(i)
        try:
            return Frame(i, f.stem, read_image(f), stamp)
        except InputError as e:
            if not self.skip_bad:
                raise
            return Frame(i, f.stem, None, stamp, error=str(e))

    def __iter__(self):
        for i in range(len(self.files)):
            yield self[i]


class VideoSource(FrameSource):
    """A video file read with cv2.VideoCapture; stems are 000000, 000001, ..."""

    kind = 'video'

    def __init__(self, path):
        super().__init__(path)
        cap = self._open()
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and math.isfinite(fps) and fps > 0 else None
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._count = n if n > 0 else None
        ok, frame = cap.read()
        cap.release()
        if not ok or frame is None:
            raise InputError(f'video has no readable frames: {self.path}')

    def _open(self):
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise InputError(f'cannot open video (unsupported or corrupt): {self.path}')
        return cap

    def __len__(self):
        if self._count is None:
            raise TypeError('frame count of this video is unknown')
        return self._count

    def __iter__(self):
        cap = self._open()
        try:
            i = 0
            while True:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                if frame.ndim == 2:
                    rgb = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
                else:
                    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                stamp = i / self.fps if self.fps else float(i)
                yield Frame(i, f'{i:06d}', rgb, stamp)
                i += 1
        finally:
            cap.release()


def image_msg_to_rgb(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False
                     ) -> np.ndarray:
    """Decode a sensor_msgs/Image payload to RGB uint8 (H, W, 3), as the ROS nodes do
    (``image_msg.image_to_rgb``, cv_bridge's conversions): the camera encodings ``image_msg.CAMERA_ENCODINGS``
    (rgb8, bgr8, rgba8, bgra8, mono8, their 16-bit forms, packed YUV 4:2:2, nv12 / nv21, Bayer), and the
    generic 8UC1 = mono8, 8UC3 = bgr8, 8UC4 = bgra8, 16UC1 = mono16 that some recorders write."""
    from types import SimpleNamespace

    from .image_msg import image_to_rgb
    alias = {'8uc1': 'mono8', '8uc3': 'bgr8', '8uc4': 'bgra8', '16uc1': 'mono16'}
    enc = alias.get(str(encoding).lower(), str(encoding))
    # data: bytes, a list or a uint8 array (rosbags): image_msg reads each in place, without a copy
    msg = SimpleNamespace(encoding=enc, height=int(height), width=int(width), step=int(step), data=data,
                          is_bigendian=bool(is_bigendian))
    return image_to_rgb(msg)


IMAGE_MSG, COMPRESSED_IMAGE_MSG = 'sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage'
_IMAGE_TYPES = (IMAGE_MSG, COMPRESSED_IMAGE_MSG)


class RosbagSource(FrameSource):
    """Images of one topic of a rosbag2 (directory with metadata.yaml, or a .mcap / .db3 file).

    Picks ``topic`` or the first sensor_msgs/msg/Image topic (else the first CompressedImage topic).
    Stems are 000000, ...; ``stamp_s`` is the header stamp (falls back to the record time)."""

    kind = 'rosbag'

    def __init__(self, path, topic: str | None = None):
        super().__init__(path)
        reader = self._reader()
        try:
            conns = [c for c in reader.connections if c.msgtype in _IMAGE_TYPES]
            if topic is not None:
                sel = [c for c in reader.connections if c.topic == topic]
                if not sel:
                    raise InputError(f'topic {topic!r} not in bag {self.path} '
                                     f'(image topics: {sorted({c.topic for c in conns}) or "none"})')
                if sel[0].msgtype not in _IMAGE_TYPES:
                    raise InputError(f'topic {topic!r} in {self.path} has type {sel[0].msgtype}, '
                                     f'not sensor_msgs/msg/Image')
            else:
                if not conns:
                    raise InputError(f'no sensor_msgs/msg/Image topic in bag: {self.path}')
                raw = sorted({c.topic for c in conns if c.msgtype == IMAGE_MSG})
                topic = raw[0] if raw else sorted({c.topic for c in conns})[0]
                sel = [c for c in conns if c.topic == topic]
            self.topic = topic
            self.msgtype = sel[0].msgtype
            self._count = sum(c.msgcount for c in sel)
            # fps from the record times of the topic's first (up to 31) messages
            times = []
            for _, t_ns, _ in reader.messages(connections=sel):
                times.append(t_ns)
                if len(times) >= 31:
                    break
            dur_s = (times[-1] - times[0]) / 1e9 if len(times) > 1 else 0.0
            self.fps = (len(times) - 1) / dur_s if dur_s > 0 else None
        finally:
            reader.close()

    def _reader(self):
        try:
            from rosbags.highlevel import AnyReader
            from rosbags.typesys import Stores, get_typestore
        except ImportError as e:  # pragma: no cover - rosbags is a requirement
            raise InputError(f'reading bags needs the rosbags package ({e})') from None
        try:
            reader = AnyReader([self.path], default_typestore=get_typestore(Stores.ROS2_JAZZY))
            reader.open()
        except Exception as e:
            raise InputError(f'cannot open rosbag {self.path}: {type(e).__name__}: {e}') from None
        return reader

    def __len__(self):
        return self._count

    def __iter__(self):
        reader = self._reader()
        try:
            conns = [c for c in reader.connections if c.topic == self.topic]
            for i, (conn, t_ns, raw) in enumerate(reader.messages(connections=conns)):
                try:
                    yield self._frame(reader, conn, i, t_ns, raw)
                except InputError as e:
                    if not self.skip_bad:
                        raise
                    yield Frame(i, f'{i:06d}', None, t_ns * 1e-9, error=str(e))
        finally:
            reader.close()

    def _frame(self, reader, conn, i: int, t_ns: int, raw) -> Frame:
        try:
            msg = reader.deserialize(raw, conn.msgtype)
        except Exception as e:
            raise InputError(f'cannot deserialize message #{i} on {self.topic}: {type(e).__name__}: {e}') from None
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if stamp == 0:
            stamp = t_ns * 1e-9
        if conn.msgtype == COMPRESSED_IMAGE_MSG:
            bgr = cv2.imdecode(np.asarray(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise InputError(f'cannot decode CompressedImage #{i} ({msg.format}) on {self.topic}')
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        else:
            try:
                rgb = image_msg_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                                       bool(msg.is_bigendian))
            except InputError as e:
                raise InputError(f'message #{i} on {self.topic}: {e}') from None
        return Frame(i, f'{i:06d}', rgb, float(stamp))


def _is_bag(path: Path) -> bool:
    return (path.is_dir() and (path / 'metadata.yaml').is_file()) or path.suffix.lower() in BAG_EXTS


def open_source(path, topic: str | None = None, fps: float | None = None, skip_bad: bool = False) -> FrameSource:
    """Open a video file, an image folder, a single image or a rosbag2 (dir / .mcap / .db3). ``skip_bad``:
    unreadable frames come as ``Frame.error`` instead of raising (module docstring)."""
    src = _open_source(path, topic, fps)
    src.skip_bad = bool(skip_bad)
    return src


def _open_source(path, topic, fps) -> FrameSource:
    if path is None or str(path) == '':
        raise InputError('no input path given')
    p = Path(path)
    if not p.exists():
        raise InputError(f'input not found: {p}')
    if _is_bag(p):
        return RosbagSource(p, topic=topic)
    if p.is_dir():
        return ImageFolderSource(p, fps=fps)
    ext = p.suffix.lower()
    if ext in IMAGE_EXTS:
        read_image(p)  # fail early on an unreadable file
        return ImageFolderSource(p.parent, fps=fps, files=[p])
    if ext in VIDEO_EXTS:
        return VideoSource(p)
    raise InputError(f'unsupported input type {ext or "(no extension)"!r}: {p} (expected a video '
                     f'{"/".join(VIDEO_EXTS)}, an image folder, an image, or a rosbag2)')


# ----------------------------------------------------------------------------------------------- ground truth

def read_label_png(path, fmt: str = 'trainids') -> np.ndarray:
    """Read a single-channel label PNG as uint8 class ids of the active set (255 = ignore).

    ``fmt``: 'trainids' (as stored), 'labelids' (Cityscapes label ids -> train ids), 'camvid' (void 11 -> 255).
    """
    path = Path(path)
    if fmt not in ('trainids', 'labelids', 'camvid'):
        raise InputError(f'unknown label format {fmt!r} (known: trainids, labelids, camvid)')
    if not path.is_file():
        raise InputError(f'label file not found: {path}')
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise InputError(f'cannot read label image: {path}')
    if lab.ndim == 3:
        if lab.shape[2] >= 3 and (np.array_equal(lab[..., 0], lab[..., 1]) and np.array_equal(lab[..., 1], lab[..., 2])):
            lab = lab[..., 0]
        else:
            raise InputError(f'label image must be single-channel class ids, got {lab.shape[2]} colour channels: {path}')
    if lab.dtype != np.uint8:
        if lab.max(initial=0) > 255:
            raise InputError(f'label ids exceed 255 in {path}')
        lab = lab.astype(np.uint8)
    if fmt == 'labelids':
        return labelid_to_trainid(lab)
    if fmt == 'camvid':
        return camvid_gt_to_ids(lab)
    return lab


# ----------------------------------------------------------------------------------------------- writers

def _write_png(path: Path, img: np.ndarray) -> None:
    if not cv2.imwrite(str(path), img):
        raise InputError(f'cannot write image: {path}')


class LabelWriter:
    """Writes ``<dir>/<stem>.png`` uint8 label maps (and optionally ``<dir>/color/<stem>.png``)."""

    def __init__(self, out_dir, class_set: ClassSet | str | None = None, color: bool = False):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.class_set = get_class_set(class_set) if class_set is not None else None
        self.color = bool(color and self.class_set is not None)
        if self.color:
            (self.dir / 'color').mkdir(exist_ok=True)
        self.count = 0

    def write(self, stem: str, labels: np.ndarray) -> Path:
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise InputError(f'labels must be (h, w), got shape {labels.shape}')
        path = self.dir / f'{stem}.png'
        _write_png(path, labels.astype(np.uint8))
        if self.color:
            _write_png(self.dir / 'color' / f'{stem}.png',
                       cv2.cvtColor(colorize(labels, self.class_set), cv2.COLOR_RGB2BGR))
        self.count += 1
        return path


def overlay(rgb: np.ndarray, labels: np.ndarray, class_set, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised labels (resized nearest to the frame) over the RGB frame; ignore stays as is."""
    cs = get_class_set(class_set)
    h, w = rgb.shape[:2]
    labels = np.asarray(labels, dtype=np.uint8)
    if labels.shape != (h, w):
        labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    col = colorize(labels, cs)
    out = cv2.addWeighted(rgb, 1.0 - alpha, col, alpha, 0.0)
    ign = labels >= cs.num_classes
    out[ign] = rgb[ign]
    return out


class OverlayVideoWriter:
    """Writes frames with the label overlay to an mp4 (cv2 'mp4v'); falls back to MJPG .avi if the mp4
    writer cannot open (``self.path`` then names the .avi and ``self.fallback`` is True)."""

    def __init__(self, path, fps: float, class_set, alpha: float = 0.5):
        self.path = Path(path)
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.class_set = get_class_set(class_set)
        self.alpha = float(alpha)
        self.fallback = False
        self._vw = None
        self._size = None
        self.count = 0

    def _open(self, size):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        vw = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*'mp4v'), self.fps, size)
        if not vw.isOpened():
            avi = self.path.with_suffix('.avi')
            vw = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*'MJPG'), self.fps, size)
            if not vw.isOpened():
                raise InputError(f'cannot open a video writer for {self.path} (mp4v) or {avi} (MJPG)')
            print(f'warning: mp4 writer unavailable, writing MJPG to {avi}', file=sys.stderr)
            self.path = avi
            self.fallback = True
        self._vw = vw
        self._size = size

    def write(self, rgb: np.ndarray, labels: np.ndarray | None) -> None:
        rgb = np.asarray(rgb, dtype=np.uint8)
        size = (rgb.shape[1], rgb.shape[0])
        if self._vw is None:
            self._open(size)
        elif size != self._size:
            rgb = cv2.resize(rgb, self._size, interpolation=cv2.INTER_AREA)
        img = overlay(rgb, labels, self.class_set, self.alpha) if labels is not None else rgb
        self._vw.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        self.count += 1

    def close(self) -> None:
        if self._vw is not None:
            self._vw.release()
            self._vw = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, Path):
        return str(o)
    return o


def write_json(path, obj, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (numpy values converted, NaN/inf -> null); creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + '.tmp')
    with open(tmp, 'w') as f:
        json.dump(_jsonable(obj), f, indent=indent)
        f.write('\n')
    os.replace(tmp, path)
    return path


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Lay out, write (PNG by the suffix) and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches='tight')   # (legends placed outside the axes too)
    plt.close(fig)
    return path
