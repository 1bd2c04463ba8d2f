"""Backends: onnxruntime (exported, verified, cached), TorchScript, and TorchScript/ONNX model
files described by a yaml config. Outputs must match the published references too."""
import json
import shutil

import cv2
import numpy as np
import pytest
import torch
import yaml

from vidseg_ros.core.errors import ConfigError, ModelError
from vidseg_ros.core.models import AUTO_BACKEND, BACKENDS, load_model
from vidseg_ros.core.models.backends import make_torchscript

TOL = 1e-3


def _rgb(shared, name):
    return cv2.cvtColor(cv2.imread(str(shared / 'models' / 'reference_inputs' / name)),
                        cv2.COLOR_BGR2RGB)


def _check_reference(shared, model, arch, ckpt, image):
    refs = json.loads((shared / 'models' / arch / 'reference' / 'reference_outputs.json').read_text())
    extra = shared / 'models' / arch / 'reference' / 'reference_outputs_extra.json'
    if extra.is_file():
        refs.update(json.loads(extra.read_text()))
    key = f'{ckpt}__{image.rsplit(".", 1)[0]}'
    ref = refs[key]
    logits = model.logits(_rgb(shared, image))
    px = np.asarray(ref['sample_pixels'])
    diff = float(np.abs(logits[:, px[:, 0], px[:, 1]].T - np.asarray(ref['sample_logits'])).max())
    assert diff < TOL, f'{model.backend} {key}: max |logit diff| {diff}'
    lab = cv2.imread(str(shared / 'models' / arch / 'reference' / f'{key}.labels.png'),
                     cv2.IMREAD_UNCHANGED)
    argmax = logits.argmax(0)
    bad = np.argwhere(argmax != lab)
    assert len(bad) <= 5, f'{model.backend} {key}: {len(bad)} pixels differ'
    for r, c in bad:   # only float-level ties may differ
        assert logits[argmax[r, c], r, c] - logits[lab[r, c], r, c] < 1e-3
    return diff


@pytest.fixture(scope='module')
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp('vidseg_cache')


def test_auto_backend_constant():
    assert AUTO_BACKEND in BACKENDS


def test_onnxruntime_export_cache_and_reference(shared, onnx_cache, monkeypatch):
    monkeypatch.setenv('VIDSEG_CACHE', str(onnx_cache))
    m = load_model('espnetv2_s0.5_512x256', backend='onnxruntime')
    assert m.backend == 'onnxruntime'
    files = sorted((onnx_cache / 'onnx').glob('*.onnx'))
    assert len(files) == 1 and '512x256' in files[0].name
    meta = json.loads(files[0].with_suffix('.json').read_text())
    assert meta['verified'] and meta['max_abs_diff'] < TOL
    mtime = files[0].stat().st_mtime_ns
    m2 = load_model('espnetv2_s0.5_512x256', backend='onnxruntime')    # reuses the cache
    assert files[0].stat().st_mtime_ns == mtime
    for img in ('aachen_000000_000019_leftImg8bit.jpg', '00000.jpg'):
        _check_reference(shared, m2, 'espnetv2', 'espnetv2_s_0.5_city_512x256', img)
    # torch module stays available for features / caching
    assert 'e4' in m2.features(_rgb(shared, '00000.jpg'))
    # auto on CPU picks AUTO_BACKEND
    assert load_model('espnetv2_s0.5_512x256').backend == AUTO_BACKEND


@pytest.mark.parametrize('name,arch,ckpt,image', [
    ('espnetv2_s2.0', 'espnetv2', 'espnetv2_s_2.0_city_1024x512',
     'aachen_000000_000019_leftImg8bit.jpg'),
    ('espnet_p2q8_camvid', 'espnet', 'espnet_p_2_q_8_camvid', '0001TP_008550.png'),
    ('espnet_p2q8', 'espnet', 'espnet_p_2_q_8', '00000.jpg'),
])
def test_onnxruntime_matches_reference(shared, name, arch, ckpt, image):
    # default cache dir: the export (a few seconds) is reused across runs
    m = load_model(name, backend='onnxruntime')
    _check_reference(shared, m, arch, ckpt, image)
    seg = m.segment(_rgb(shared, image))
    assert seg.probs.shape[0] == m.num_outputs and seg.labels.dtype == np.uint8


def test_torchscript_backend_matches_reference(shared):
    m = load_model('espnetv2_s1.0_512x256', backend='torchscript')
    assert m.backend == 'torchscript'
    _check_reference(shared, m, 'espnetv2', 'espnetv2_s_1.0_city_512x256', '0001TP_008550.png')


def _write_yaml(path, **kw):
    path.write_text(yaml.safe_dump(kw))
    return path


def test_torchscript_file_with_yaml(shared, tmp_path):
    ref = load_model('espnetv2_s0.5_512x256', backend='torch')
    ts = make_torchscript(ref.net, (512, 256))
    pt = tmp_path / 'net.pt'
    ts.save(str(pt))
    with pytest.raises(ModelError, match='needs a model config'):
        load_model(str(pt))
    cfg = ref.config.to_dict()
    cfg.update(arch='torchscript', name='ts_net', weights=None)
    _write_yaml(tmp_path / 'net.yaml', **cfg)
    img = _rgb(shared, '00000.jpg')
    for spec in (str(pt), str(tmp_path / 'net.yaml')):
        m = load_model(spec)
        assert m.backend == 'torchscript' and m.name == 'ts_net'
        np.testing.assert_allclose(m.logits(img), ref.logits(img), atol=1e-4)
        assert set(m.features(img)) == {'logits'}
    with pytest.raises(ConfigError, match='TorchScript'):
        load_model(str(pt), backend='onnxruntime')
    # a config whose class count does not match the file
    cfg.update(num_outputs=12, output_to_class=None)
    _write_yaml(tmp_path / 'net.yaml', **cfg)
    with pytest.raises(ModelError, match='expects'):
        load_model(str(pt))


def test_onnx_file_with_yaml(shared, tmp_path, onnx_cache, monkeypatch):
    monkeypatch.setenv('VIDSEG_CACHE', str(onnx_cache))
    ref = load_model('espnetv2_s0.5_512x256', backend='onnxruntime')
    src = next((onnx_cache / 'onnx').glob('*_512x256_*.onnx'))
    onnx = tmp_path / 'seg.onnx'
    shutil.copy(src, onnx)
    with pytest.raises(ModelError, match='seg.yaml'):
        load_model(str(onnx))
    cfg = ref.config.to_dict()
    cfg.update(arch='onnx', name='onnx_net', weights='seg.onnx')
    _write_yaml(tmp_path / 'other_name.yaml', **cfg)
    m = load_model(str(tmp_path / 'other_name.yaml'))
    img = _rgb(shared, 'aachen_000000_000019_leftImg8bit.jpg')
    assert m.backend == 'onnxruntime' and m.net is None
    np.testing.assert_array_equal(m.logits(img), ref.logits(img))
    with pytest.raises(ConfigError, match='ONNX'):
        load_model(str(tmp_path / 'other_name.yaml'), backend='torch')
    cfg.update(input_size=[256, 128])
    _write_yaml(tmp_path / 'other_name.yaml', **cfg)
    with pytest.raises(ModelError, match='takes 512x256 input'):
        load_model(str(tmp_path / 'other_name.yaml'))
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(b'not an onnx graph')
    _write_yaml(tmp_path / 'bad.yaml', **dict(cfg, weights=None))
    with pytest.raises(ModelError, match='cannot load ONNX model'):
        load_model(str(bad))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_matches_reference(shared):
    m = load_model('espnetv2_s2.0', device='cuda')
    assert m.backend == 'torch' and m.device == 'cuda'
    _check_reference(shared, m, 'espnetv2', 'espnetv2_s_2.0_city_1024x512', '00000.jpg')
