"""Synthetic drive: determinism, labels, exactness of the rendered optical flow, output layout, CLI."""
import json

import cv2
import numpy as np
import pytest

from vidseg_ros.core import synth
from vidseg_ros.core.classes import CITYSCAPES
from vidseg_ros.core.errors import VidsegError
from vidseg_ros.core.flow import FlowEstimator, endpoint_error, read_flo
from vidseg_ros.core.warp import warp_image

C = {n: i for i, n in enumerate(CITYSCAPES.names)}


@pytest.fixture(scope='module')
def drive():
    return synth.SyntheticDrive(seed=0, size=(640, 360), fps=10)


@pytest.fixture(scope='module')
def pair(drive):
    """Layers of frames 9 and 10 (default size)."""
    return drive.render_layers(9), drive.render_layers(10)


def _covisible(prev, cur):
    """Pixels of `cur` whose exact backward flow lands inside `prev` on the same surface (the forward flow of
    `prev` there leads back within 0.5 px): visible in both frames."""
    fb, ff_prev = cur['flow_bwd'], prev['flow_fwd']
    h, w = fb.shape[:2]
    back = warp_image(ff_prev, fb)
    cons = np.linalg.norm(fb + back, axis=2) < 0.5
    mx = np.arange(w)[None, :] + fb[..., 0]
    my = np.arange(h)[:, None] + fb[..., 1]
    return cons & (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)


def test_deterministic_and_seed_dependent():
    a = synth.SyntheticDrive(seed=7, size=(160, 96)).render(4)
    b = synth.SyntheticDrive(seed=7, size=(160, 96)).render(4)
    c = synth.SyntheticDrive(seed=8, size=(160, 96)).render(4)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    assert a[0].tobytes() != c[0].tobytes()
    rgb, lab, fb, ff = a
    assert rgb.dtype == np.uint8 and rgb.shape == (96, 160, 3) and rgb.flags.c_contiguous
    assert lab.dtype == np.uint8 and lab.shape == (96, 160)
    assert fb.dtype == np.float32 and fb.shape == (96, 160, 2) and ff.shape == (96, 160, 2)
    assert np.isfinite(fb).all() and np.isfinite(ff).all()


def test_labels_have_street_classes(pair):
    prev, cur = pair
    present = set(np.unique(cur['labels']).tolist())
    for name in ('road', 'sidewalk', 'building', 'pole', 'traffic sign', 'vegetation', 'sky', 'person', 'car'):
        assert C[name] in present, f'{name} missing from frame 10 (present: {sorted(present)})'
    assert present <= set(synth.SCENE_CLASSES)
    assert 255 not in present
    # labels agree with the geometry layers: sky exactly where nothing was hit, road fills the image bottom centre
    assert ((cur['labels'] == C['sky']) == (cur['owner'] == synth.SKY_ID)).all()
    assert (cur['labels'] == C['sky']).mean() > 0.02
    assert (cur['labels'][-20:, 250:390] == C['road']).mean() > 0.95


def test_all_scene_classes_appear_over_a_drive():
    d = synth.SyntheticDrive(seed=0, size=(320, 180))
    seen = set()
    for t in range(0, 60, 6):
        seen |= set(np.unique(d.render(t)[1]).tolist())
    assert set(synth.SCENE_CLASSES) <= seen, sorted(set(synth.SCENE_CLASSES) - seen)


def test_exact_backward_flow_reproduces_frame(pair):
    prev, cur = pair
    valid = _covisible(prev, cur)
    assert valid.mean() > 0.9
    cur_rgb = cur['rgb'].astype(np.float32)
    err_exact = np.abs(warp_image(prev['rgb'], cur['flow_bwd']).astype(np.float32) - cur_rgb).mean(axis=2)
    err_zero = np.abs(prev['rgb'].astype(np.float32) - cur_rgb).mean(axis=2)
    e, z = float(err_exact[valid].mean()), float(err_zero[valid].mean())
    assert e < 3.0, f'exact-flow warp error {e:.2f} gray levels'
    assert z > 4 * e, f'zero flow {z:.2f} vs exact {e:.2f}'
    assert float(np.median(err_exact[valid])) <= 1.5
    # the forward flow is the inverse of the next frame's backward flow on co-visible pixels
    err_fwd = np.abs(warp_image(cur['rgb'], prev['flow_fwd']).astype(np.float32)
                     - prev['rgb'].astype(np.float32)).mean(axis=2)
    valid_prev = np.linalg.norm(prev['flow_fwd'] + warp_image(cur['flow_bwd'], prev['flow_fwd']), axis=2) < 0.5
    assert float(err_fwd[valid_prev].mean()) < 3.0


def test_exact_flow_beats_dis(pair):
    prev, cur = pair
    valid = _covisible(prev, cur)
    gt = cur['flow_bwd']
    dis = FlowEstimator('dis', 'medium')(cur['rgb'], prev['rgb'])
    epe_dis = endpoint_error(dis, gt, valid)
    epe_zero = endpoint_error(np.zeros_like(gt), gt, valid)
    assert epe_dis < 0.3 * epe_zero, (epe_dis, epe_zero)  # DIS tracks the textures: the flow fits the images
    cur_rgb = cur['rgb'].astype(np.float32)
    e_gt = np.abs(warp_image(prev['rgb'], gt).astype(np.float32) - cur_rgb).mean(axis=2)[valid].mean()
    e_dis = np.abs(warp_image(prev['rgb'], dis).astype(np.float32) - cur_rgb).mean(axis=2)[valid].mean()
    assert e_gt < e_dis, (e_gt, e_dis)


def test_moving_objects_have_their_own_flow(drive, pair):
    _, cur = pair
    s = 10 / drive.fps
    R, T, gR, gT = drive._prim_transforms(s)
    Rc, Cc = drive.camera_pose(s)
    h, w = cur['owner'].shape
    rays = drive._rays_cam.reshape(-1, 3) @ Rc.T
    prel = (rays * np.where(np.isfinite(cur['depth']), cur['depth'], 0).reshape(-1, 1)).astype(np.float32)
    static = drive._flow(s, s - 0.1, cur['owner'], np.zeros_like(cur['group']), prel.reshape(h, w, 3),
                         rays.reshape(h, w, 3).astype(np.float32), Cc, gR, gT)
    diff = np.linalg.norm(static - cur['flow_bwd'], axis=2)
    still = cur['group'] == 0
    assert diff[still].max() < 1e-3  # the static world: camera motion only
    moving_cars = [g for g in np.unique(cur['group'][cur['labels'] == C['car']])
                   if g and np.linalg.norm(drive._scene.groups[g].vel) > 0]
    assert moving_cars
    big = 0
    for g in moving_cars:
        m = cur['group'] == g
        if m.sum() > 200:
            assert np.median(diff[m]) > 0.3, f'car group {g} moves like the background'
            big += 1
    assert big >= 1
    # parked cars are part of the static world
    parked = [g for g in np.unique(cur['group']) if g and np.linalg.norm(drive._scene.groups[g].vel) == 0]
    for g in parked:
        assert diff[cur['group'] == g].max() < 1e-3


def test_sky_flow_is_rotation_only(drive, pair):
    _, cur = pair
    sky = cur['labels'] == C['sky']
    Rc, _ = drive.camera_pose(1.0)
    Rp, _ = drive.camera_pose(0.9)
    H = drive.K @ Rp.T @ Rc @ np.linalg.inv(drive.K)  # infinite homography frame 10 -> 9
    ys, xs = np.nonzero(sky)
    p = H @ np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
    exp = np.stack([p[0] / p[2] - xs, p[1] / p[2] - ys], axis=1)
    np.testing.assert_allclose(cur['flow_bwd'][ys, xs], exp, atol=2e-3)


def test_generate_drive_layout_and_cli(tmp_path):
    out = synth.generate_drive(tmp_path / 'a', frames=3, size=(96, 64), fps=5, seed=3, progress=False)
    names = ['000000', '000001', '000002']
    assert sorted(p.stem for p in (out / 'images').glob('*.png')) == names
    assert sorted(p.stem for p in (out / 'labels').glob('*.png')) == names
    assert sorted(p.stem for p in (out / 'flow_bwd').glob('*.flo')) == names[1:]
    assert sorted(p.stem for p in (out / 'flow_fwd').glob('*.flo')) == names[:2]
    meta = json.loads((out / 'meta.json').read_text())
    assert meta['size'] == [96, 64] and meta['fps'] == 5 and meta['seed'] == 3 and meta['frames'] == 3
    assert len(meta['poses_cam_to_world']) == 3 and meta['class_set'] == 'cityscapes'
    d = synth.SyntheticDrive(seed=3, size=(96, 64), fps=5)
    rgb, lab, fb, ff = d.render(1)
    img = cv2.cvtColor(cv2.imread(str(out / 'images' / '000001.png')), cv2.COLOR_BGR2RGB)
    assert (img == rgb).all()
    assert (cv2.imread(str(out / 'labels' / '000001.png'), cv2.IMREAD_UNCHANGED) == lab).all()
    assert (read_flo(out / 'flow_bwd' / '000001.flo') == fb).all()
    assert (read_flo(out / 'flow_fwd' / '000001.flo') == ff).all()
    np.testing.assert_allclose(np.array(meta['poses_cam_to_world'][1]), d.camera_matrix(1))
    # same seed through the CLI -> byte-identical files
    assert synth.cli_main(['--out', str(tmp_path / 'b'), '--frames', '3', '--size', '96x64', '--fps', '5',
                           '--seed', '3', '--quiet', '--video']) == 0
    meta_b = json.loads((tmp_path / 'b' / 'meta.json').read_text())
    assert meta_b.pop('video') == 'drive.mp4' and meta_b == meta
    for sub in ('images/000002.png', 'labels/000000.png', 'flow_bwd/000002.flo', 'flow_fwd/000000.flo'):
        assert (tmp_path / 'a' / sub).read_bytes() == (tmp_path / 'b' / sub).read_bytes()
    assert (tmp_path / 'b' / 'drive.mp4').stat().st_size > 0


def test_bad_input(tmp_path):
    with pytest.raises(VidsegError, match='size'):
        synth.SyntheticDrive(size=(8, 8))
    with pytest.raises(VidsegError, match='size'):
        synth.SyntheticDrive(size='640x360')
    with pytest.raises(VidsegError, match='seed'):
        synth.SyntheticDrive(seed=-1)
    with pytest.raises(VidsegError, match='fps'):
        synth.SyntheticDrive(fps=0)
    with pytest.raises(VidsegError, match='frames'):
        synth.generate_drive(tmp_path / 'x', frames=0, progress=False)
    (tmp_path / 'file').write_text('x')
    with pytest.raises(VidsegError, match='not a directory'):
        synth.generate_drive(tmp_path / 'file', frames=1, size=(32, 32), progress=False)
    with pytest.raises(SystemExit) as e:
        synth.cli_main(['--out', str(tmp_path / 'y'), '--size', '640by360'])
    assert e.value.code == 2


def test_propagation_limits_analysis(tmp_path, capsys):
    from vidseg_ros.core import synth_analysis as sa
    res = sa.propagation_limits(seed=1, size=(160, 96), keyframes=1, max_distance=3, presets=('ultrafast',),
                                progress=False)
    gt, dis = res['miou_by_distance']['gt'], res['miou_by_distance']['dis_ultrafast']
    assert sorted(gt) == [1, 2, 3] and sorted(dis) == [1, 2, 3]
    assert all(0.0 < v < 1.0 for v in list(gt.values()) + list(dis.values()))
    assert gt[1] > gt[3]  # propagation degrades with distance even with exact flow (disocclusions)
    pa = res['pixel_accuracy_by_distance']['gt']
    assert pa[1] > 0.9 and pa[1] > pa[3]
    assert res['distance_5pt_drop']['gt'] in (1, 2, 3, None)
    assert sa.main(['--size', '96x64', '--keyframes', '1', '--max-distance', '2', '--presets', 'ultrafast',
                    '--out', str(tmp_path), '--quiet']) == 0
    js = json.loads((tmp_path / 'limits.json').read_text())
    assert set(js['miou_by_distance']) == {'gt', 'dis_ultrafast'}
    assert (tmp_path / 'limits.png').stat().st_size > 1000
    assert 'mIoU' in capsys.readouterr().out
    with pytest.raises(VidsegError, match='preset'):
        sa.propagation_limits(size=(96, 64), keyframes=1, max_distance=1, presets=('slowest',), progress=False)
