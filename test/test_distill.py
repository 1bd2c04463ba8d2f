"""The distillation recipe of the packaged default model (vidseg train distill) and the model itself."""
import cv2
import numpy as np
import pytest
import torch

from vidseg_ros.core import distill
from vidseg_ros.core.classes import IGNORE


def test_distillation_loss_terms():
    t = torch.randn(2, 20, 8, 16)
    none = torch.full((2, 8, 16), IGNORE, dtype=torch.long)
    loss, kd, ce = distill.distillation_loss(t.clone(), t, none)
    assert kd.abs() < 1e-5 and ce == 0 and loss.abs() < 1e-5
    other = torch.randn(2, 20, 8, 16)
    _, kd2, _ = distill.distillation_loss(other, t, none)
    assert kd2 > 0.1
    lab = torch.randint(0, 19, (2, 8, 16))
    loss3, kd3, ce3 = distill.distillation_loss(t.clone(), t, lab, human_weight=2.0)
    assert ce3 > 0 and torch.isclose(loss3, kd3 + 2.0 * ce3)


def test_crop_dataset_shapes_and_determinism():
    rng = np.random.RandomState(0)
    items = [(rng.randint(0, 255, (120, 200, 3), dtype=np.uint8), rng.randint(0, 19, (120, 200)).astype(np.uint8), 'a'),
             (rng.randint(0, 255, (90, 160, 3), dtype=np.uint8), None, 'b')]
    ds = distill.CropDataset(items, (64, 32), length=6, seed=3, student_wh=(32, 16))
    for i in range(6):
        img, simg, lab = ds[i]
        assert img.shape == (3, 32, 64) and simg.shape == (3, 16, 32) and lab.shape == (32, 64)
        assert img.dtype == torch.uint8 and lab.dtype == torch.long
    a, b = ds[4], distill.CropDataset(items, (64, 32), length=6, seed=3, student_wh=(32, 16))[4]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_bad_size_is_a_clear_error(tmp_path, shared):
    with pytest.raises(Exception, match='multiples of 16'):
        distill.cli_main(['--size', '100x50', '--iters', '1', '--out', str(tmp_path), '--device', 'cpu',
                          '--ckpt-dir', str(tmp_path / 'ck')])


@pytest.mark.shared
def test_two_training_iterations_write_a_loadable_model(tmp_path, shared):
    from vidseg_ros.core.models import load_model
    out = tmp_path / 'w'
    rc = distill.cli_main(['--size', '64x32', '--teacher-size', '128x64', '--iters', '2', '--batch', '2',
                           '--workers', '0', '--max-frames', '2', '--device', 'cpu', '--out', str(out),
                           '--ckpt-dir', str(tmp_path / 'ck'), '--restart'])
    assert rc == 0 and (out / 'default.pt').is_file() and (tmp_path / 'ck' / 'last.ckpt').is_file()
    m = load_model(str(out / 'default.yaml'), backend='torch')
    assert m.input_size == (64, 32) and m.num_outputs == 20
    # resuming from the finished checkpoint does no more iterations
    rc = distill.cli_main(['--size', '64x32', '--teacher-size', '128x64', '--iters', '2', '--batch', '2',
                           '--workers', '0', '--max-frames', '2', '--device', 'cpu', '--out', str(out),
                           '--ckpt-dir', str(tmp_path / 'ck')])
    assert rc == 0


@pytest.mark.shared
def test_packaged_default_model_agrees_with_teacher(shared):
    """The committed compact model is the default and agrees with the s2.0 teacher on a real frame."""
    from vidseg_ros.core.io import read_image
    from vidseg_ros.core.models import load_model
    from vidseg_ros.core.paths import WEIGHTS_DIR
    assert (WEIGHTS_DIR / 'default.pt').stat().st_size < 5 * 1024 * 1024
    m = load_model('default', backend='torch')
    assert m.name.startswith("vidseg_compact") and m.input_size == (576, 288)
    t = load_model('espnetv2_s2.0_512x256', backend='torch')
    rgb = read_image(shared / 'data' / 'cityscapes_seq' / 'seq0003' / 'aachen_000003_000019_leftImg8bit.jpg') \
        if (shared / 'data' / 'cityscapes_seq' / 'seq0003' / 'aachen_000003_000019_leftImg8bit.jpg').exists() \
        else read_image(sorted((shared / 'data' / 'cityscapes_seq' / 'seq0003').glob('*.jpg'))[19])
    a, b = m.segment(rgb).labels, t.segment(rgb).labels
    a = cv2.resize(a, b.shape[::-1], interpolation=cv2.INTER_NEAREST)   # the two run at different sizes
    valid = b != 255
    assert (a[valid] == b[valid]).mean() > 0.80


def test_class_balance_weights_favour_rare_classes():
    logits = torch.zeros(1, 3, 10, 10)
    logits[0, 0] = 5.0            # class 0 everywhere ...
    logits[0, 1, :1, :2] = 10.0   # ... except 2 pixels of class 1
    w = distill.class_balance_weights(logits, power=0.5)
    assert torch.isclose(w.mean(), torch.tensor(1.0))
    assert w[0, 0, 0] > 5 * w[0, 5, 5]
    t = torch.randn(1, 3, 10, 10)
    none = torch.full((1, 10, 10), IGNORE, dtype=torch.long)
    plain = distill.distillation_loss(t * 0, logits, none)[1]
    bal = distill.distillation_loss(t * 0, logits, none, balance=0.5)[1]
    assert bal != plain


@pytest.mark.shared
def test_freeze_bn_keeps_the_initialisation_batchnorm(tmp_path, shared):
    """--freeze-bn (small CPU batches): BatchNorm statistics and affine parameters stay those of the
    initialisation while the convolutions train."""
    import torch
    init = shared / 'models' / 'espnetv2' / 'espnetv2_s_0.5_city_512x256.pth'
    out = tmp_path / 'w'
    rc = distill.cli_main(['--width', '0.5', '--init', str(init), '--size', '64x32', '--teacher-size', '128x64',
                           '--iters', '2', '--batch', '2', '--workers', '0', '--max-frames', '2', '--lr', '1e-2',
                           '--freeze-bn', '--device', 'cpu', '--out', str(out), '--ckpt-dir', str(tmp_path / 'ck'),
                           '--restart'])
    assert rc == 0
    before = torch.load(str(init), map_location='cpu', weights_only=True)
    after = torch.load(str(out / 'default.pt'), map_location='cpu', weights_only=True)
    bn = [k for k in after if k.endswith(('running_mean', 'running_var'))]
    conv = [k for k in after if k.endswith('.weight') and after[k].ndim == 4]
    assert bn and all(torch.equal(after[k], before[k]) for k in bn)
    assert any(not torch.equal(after[k], before[k]) for k in conv)


def test_missing_teacher_weights_is_a_clear_error(tmp_path, shared):
    with pytest.raises(Exception, match='teacher weights not found: .*nope.pth'):
        distill.cli_main(['--size', '64x32', '--teacher-size', '128x64', '--iters', '1', '--device', 'cpu',
                          '--teacher-weights', str(tmp_path / 'nope.pth'), '--out', str(tmp_path),
                          '--ckpt-dir', str(tmp_path / 'ck')])


@pytest.mark.shared
def test_teacher_weights_option_is_used_and_recorded(tmp_path, shared):
    import json
    tw = shared / 'models' / 'espnetv2' / 'espnetv2_s_2.0_city_512x256.pth'
    out = tmp_path / 'w'
    rc = distill.cli_main(['--size', '64x32', '--teacher-size', '128x64', '--iters', '1', '--batch', '2',
                           '--workers', '0', '--max-frames', '1', '--device', 'cpu', '--out', str(out),
                           '--teacher-weights', str(tw), '--ckpt-dir', str(tmp_path / 'ck'), '--restart'])
    assert rc == 0
    assert json.loads((out / 'training.json').read_text())['teacher_weights'] == str(tw)


def test_center_crop_aspect():
    img = np.arange(360 * 480).reshape(360, 480)
    c = distill.center_crop_aspect(img, 2.0)
    assert c.shape == (240, 480) and c[0, 0] == img[60, 0]
    c = distill.center_crop_aspect(np.zeros((540, 1200)), 2.0)
    assert c.shape == (540, 1080)
    assert distill.center_crop_aspect(img[:240], 2.0).shape == (240, 480)


def test_full_frame_dataset_flips_image_target_and_label_together():
    rng = np.random.default_rng(0)
    items = [(rng.integers(0, 255, (60, 160, 3), np.uint8), rng.integers(0, 19, (60, 160), np.uint8), 'a')]
    views = distill.full_frame_views(items, (32, 16), (64, 32))
    assert views[0][0].shape == (16, 32, 3) and views[0][1].shape == (32, 64, 3) and views[0][2].shape == (16, 32)
    logits = torch.randn(1, 20, 16, 32).half()
    ds = distill.FullFrameDataset(views, logits, length=40, seed=1)
    flips = 0
    for i in range(40):
        img, tl, lab = ds[i]
        assert img.shape == (3, 16, 32) and tl.shape == (20, 16, 32) and lab.shape == (16, 32)
        flipped = torch.equal(tl, logits[0].float().flip(-1))
        assert flipped or torch.equal(tl, logits[0].float())
        want = views[0][2][:, ::-1] if flipped else views[0][2]
        assert (lab.numpy() == want).all()
        flips += flipped
    assert 5 < flips < 35


@pytest.mark.shared
def test_full_frames_training_writes_a_loadable_model(tmp_path, shared):
    from vidseg_ros.core.models import load_model
    out = tmp_path / 'w'
    rc = distill.cli_main(['--size', '64x32', '--teacher-size', '128x64', '--iters', '2', '--batch', '2',
                           '--workers', '0', '--max-frames', '2', '--device', 'cpu', '--out', str(out),
                           '--full-frames', '--ckpt-dir', str(tmp_path / 'ck'), '--restart'])
    assert rc == 0
    m = load_model(str(out / 'default.yaml'), backend='torch')
    assert m.input_size == (64, 32)
