"""Keyframe networks: strict loading of every published checkpoint, outputs vs the published
references (sampled logits within 1e-3, argmax maps identical), API and bad-input errors."""
import json
import logging

import cv2
import numpy as np
import pytest
import torch

from vidseg_ros.core.errors import ConfigError, InputError, ModelError, VidsegError
from vidseg_ros.core.models import (REGISTRY, ModelConfig, Segmentation, load_model,
                                    load_state_dict, registry_names)
from vidseg_ros.core.models.espnetv2 import ESPNetv2Seg

TOL = 1e-3
# Trainable parameter counts from the ARCHITECTURE.md files.
PARAMS = {('espnetv2', 0.5): 80342, ('espnetv2', 1.0): 234010, ('espnetv2', 1.5): 468362,
          ('espnetv2', 2.0): 789242, ('espnet', 3, 20): 202649, ('espnet', 5, 20): 267417,
          ('espnet', 8, 20): 364569, ('espnet', 8, 12): 354517}


def _references(shared):
    out = []
    for arch in ('espnetv2', 'espnet'):
        d = shared / 'models' / arch / 'reference'
        for fn in ('reference_outputs.json', 'reference_outputs_extra.json'):
            if (d / fn).is_file():
                for key, ref in json.loads((d / fn).read_text()).items():
                    out.append((arch, key, ref))
    return out


def _read_rgb(path):
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def assert_same_argmax(logits, argmax, lab, key, tie=1e-4):
    """Argmax maps must be identical except at exact ties (top-2 logits within ``tie``: float
    summation order decides those, e.g. one pixel of espnet_p_2_q_3__00000 has a 4e-7 gap)."""
    bad = np.argwhere(argmax != lab)
    assert len(bad) <= 3, f'{key}: {len(bad)} pixels differ'
    for r, c in bad:
        gap = logits[argmax[r, c], r, c] - logits[lab[r, c], r, c]
        assert gap < tie, f'{key}: pixel ({r},{c}) differs with logit gap {gap}'


_MODELS = {}


def _model(name):
    if name not in _MODELS:
        _MODELS.clear()          # keep one model in memory at a time (references are sorted)
        _MODELS[name] = load_model(name, backend='torch')
    return _MODELS[name]


def test_registry_names():
    names = registry_names()
    for n in ('espnetv2_s2.0', 'espnetv2_s2.0_512x256', 'espnetv2_s1.0', 'espnetv2_s0.5',
              'espnet_p2q8', 'espnet_p2q3', 'espnet_p2q5', 'espnet_p2q8_camvid'):
        assert n in names
    assert REGISTRY['espnetv2_s2.0'][1].input_size == (1024, 512)
    assert REGISTRY['espnetv2_s0.5_512x256'][1].input_size == (512, 256)
    cam = REGISTRY['espnet_p2q8_camvid'][1]
    assert cam.class_set == 'camvid' and cam.num_outputs == 12 and cam.output_to_class[11] == 255
    assert cam.channel_order == 'BGR' and cam.normalise_before_resize


def test_every_checkpoint_loads_strict(shared):
    files = sorted((shared / 'models').glob('*/*.pth'))
    assert len(files) >= 10
    for f in files:
        m = load_model(str(f), backend='torch')          # architecture inferred from the keys
        net = m.net
        # strict load of the raw state dict into a fresh module of the inferred architecture
        fresh = type(net)(**({'width': net.width, 'num_classes': net.num_classes}
                             if isinstance(net, ESPNetv2Seg) else
                             {'num_classes': net.num_classes, 'p': m.config.p, 'q': m.config.q,
                              'variant': net.variant}))
        fresh.load_state_dict(torch.load(f, map_location='cpu', weights_only=True), strict=True)
        key = (('espnetv2', m.config.width) if m.config.arch == 'espnetv2'
               else ('espnet', m.config.q, m.num_outputs))
        assert sum(p.numel() for p in net.parameters()) == PARAMS[key], f.name
        reg = load_model(f.stem, backend='torch')         # file stem alias of the registry name
        assert reg.config.input_size == m.config.input_size


def test_reference_outputs_all_checkpoints(shared):
    torch.set_num_threads(1)
    refs = sorted(_references(shared), key=lambda r: r[1])
    images = {}
    checked, worst = 0, {}
    for arch, key, ref in refs:
        ckpt, stem = key.split('__')
        if not (shared / 'models' / arch / f'{ckpt}.pth').is_file():
            continue                      # references without a shipped checkpoint (s=1.5)
        m = _model(ckpt)
        assert list(m.input_size) == ref['resize'], key
        if ref['input'] not in images:
            images[ref['input']] = _read_rgb(shared / 'models' / 'reference_inputs' / ref['input'])
        logits = m.logits(images[ref['input']])
        assert list(logits.shape) == ref['output_shape'], key
        px = np.asarray(ref['sample_pixels'])
        got = logits[:, px[:, 0], px[:, 1]].T
        diff = float(np.abs(got - np.asarray(ref['sample_logits'])).max())
        worst[ckpt] = max(worst.get(ckpt, 0.0), diff)
        assert diff < TOL, f'{key}: max |logit diff| {diff}'
        mean_diff = np.abs(logits.reshape(len(logits), -1).mean(1) - ref['class_mean_logit']).max()
        assert mean_diff < TOL, key
        lab = cv2.imread(str(shared / 'models' / arch / 'reference' / f'{key}.labels.png'),
                         cv2.IMREAD_UNCHANGED)
        argmax = logits.argmax(0)
        assert_same_argmax(logits, argmax, lab, key)
        labels = m.labels_from_logits(logits)
        same = argmax == lab
        assert np.array_equal(labels[same], m.output_to_class[lab][same])
        checked += 1
    print('max |logit diff| per checkpoint:', json.dumps(worst))
    assert checked >= 30


def test_segment_contract(shared):
    m = load_model('espnetv2_s0.5_512x256', backend='torch')
    rgb = _read_rgb(shared / 'models' / 'reference_inputs' / '00000.jpg')
    seg = m.segment(rgb)
    assert isinstance(seg, Segmentation)
    assert seg.probs.shape == (20, 256, 512) and seg.probs.dtype == np.float32
    assert seg.labels.shape == (256, 512) and seg.labels.dtype == np.uint8
    np.testing.assert_allclose(seg.probs.sum(0), 1.0, atol=1e-5)
    argmax = seg.probs.argmax(0)
    np.testing.assert_array_equal(seg.labels, m.output_to_class[argmax])
    assert set(np.unique(seg.labels)) <= set(range(19)) | {255}
    assert m.class_set.name == 'cityscapes' and m.num_outputs == 20
    assert m.output_to_class[19] == 255 and m.output_to_class[5] == 5
    # an image already at network size takes the no-resize path and gives the same input
    small = cv2.resize(rgb, (512, 256), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(m.preprocess(small), m.preprocess(rgb))


def test_camvid_model_labels(shared):
    m = load_model('espnet_p2q8_camvid', backend='torch')
    seg = m.segment(_read_rgb(shared / 'models' / 'reference_inputs' / '0001TP_008550.png'))
    assert m.class_set.name == 'camvid' and seg.probs.shape == (12, 360, 480)
    assert set(np.unique(seg.labels)) <= set(range(11)) | {255}
    assert (seg.labels == 3).mean() > 0.1          # road is visible in this CamVid frame


def test_espnetv2_split_and_cache(shared):
    m = load_model('espnetv2_s0.5_512x256', backend='torch')
    net = m.net
    rgb = _read_rgb(shared / 'models' / 'reference_inputs' / 'aachen_000000_000019_leftImg8bit.jpg')
    x = m.to_tensor(rgb)
    with torch.inference_mode():
        full = net(x)
        low = net.forward_low(x)
        assert set(low) == {'x', 'e1', 'e2', 'e3'}
        assert low['e1'].shape[2:] == (128, 256) and low['e3'].shape[2:] == (32, 64)
        split, maps = net.forward_high(low, return_features=True)
        assert torch.equal(split, full)
        assert maps['e4'].shape[1:] == (128, 16, 32)
        # caching level4 (e4) or level3+4 from the same frame reproduces the output exactly
        assert torch.equal(net.forward_high(low, cached={'e4': maps['e4']}), full)
        low2 = net.forward_low(x, levels=2)
        assert 'e3' not in low2
        assert torch.equal(net.forward_high(low2), full)
        assert torch.equal(net.forward_high(low2, cached={'e3': maps['e3'], 'e4': maps['e4']}),
                           full)
        assert torch.equal(net.forward_high({'e1': low['e1'], 'e2': low['e2']},
                                            cached={'e3': maps['e3'], 'd1': maps['d1']}), full)
        # stale cache (another frame) changes the output
        other = net.forward_low(torch.flip(x, dims=[3]))
        assert not torch.equal(net.forward_high(low, cached={'e4': net.level4(other['e3'],
                                                                                other['x'])}),
                               full)
    feats = m.features(rgb)
    for k in ('e1', 'e2', 'e3', 'e4', 'd1', 'd4', 'logits'):
        assert k in feats
    np.testing.assert_allclose(feats['logits'][0].numpy(), m.logits(rgb), atol=1e-5)


def test_espnet_features(shared):
    m = load_model('espnet_p2q3', backend='torch', input_size=(512, 256))
    f = m.features(_read_rgb(shared / 'models' / 'reference_inputs' / '00000.jpg'))
    assert f['o0'].shape[1:] == (16, 128, 256) and f['o2c'].shape[1:] == (256, 32, 64)
    assert f['logits'].shape[1:] == (20, 256, 512)


def test_input_size_override(shared):
    m = load_model('espnetv2_s0.5', backend='torch', input_size=(256, 128))
    assert m.input_size == (256, 128)
    assert m.logits(np.zeros((100, 200, 3), np.uint8)).shape == (20, 128, 256)
    with pytest.raises(ConfigError, match='multiples of 16'):
        load_model('espnetv2_s0.5', backend='torch', input_size=(250, 120))


def test_bad_images(shared):
    m = load_model('espnetv2_s0.5_512x256', backend='torch')
    for bad, match in [(np.zeros((64, 64, 3), np.float32), 'dtype float32'),
                       (np.zeros((64, 64), np.uint8), 'shape'),
                       (np.zeros((64, 64, 4), np.uint8), 'shape'),
                       (np.zeros((0, 64, 3), np.uint8), 'shape'),
                       ([[1, 2, 3]], 'list')]:
        for fn in (m.segment, m.logits, m.features):
            with pytest.raises(InputError, match=match):
                fn(bad)


def _one_line(excinfo):
    msg = str(excinfo.value)
    assert '\n' not in msg and len(msg) < 400, msg
    return msg


def test_bad_weights(shared, tmp_path):
    with pytest.raises(ModelError) as e:
        load_model('espnetv2_s2.0', weights=str(tmp_path / 'nope.pth'))
    assert 'nope.pth' in _one_line(e) and 'not found' in str(e.value)

    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'PK\x03\x04 this is not a checkpoint' * 10)
    with pytest.raises(ModelError) as e:
        load_model('espnetv2_s2.0', weights=str(corrupt))
    assert 'corrupt.pth' in _one_line(e)

    # ESPNet weights for an ESPNetv2 registry entry
    v1 = shared / 'models' / 'espnet' / 'espnet_p_2_q_8.pth'
    with pytest.raises(ModelError) as e:
        load_model('espnetv2_s2.0', weights=str(v1))
    msg = _one_line(e)
    assert 'espnet_p_2_q_8.pth' in msg and 'do not fit espnetv2_s2.0' in msg
    assert 'missing 459 keys (base_net.level1' in msg and 'unexpected 189' in msg

    # wrong width
    with pytest.raises(ModelError, match='other shapes'):
        load_model('espnetv2_s2.0', weights=str(shared / 'models' / 'espnetv2' /
                                                'espnetv2_s_0.5_city_512x256.pth'))

    # wrong class count
    wrong = tmp_path / 'twelve.pth'
    torch.save(ESPNetv2Seg(2.0, num_classes=12).state_dict(), wrong)
    with pytest.raises(ModelError) as e:
        load_model('espnetv2_s2.0', weights=str(wrong))
    assert 'expected 20 outputs, file has 12' in _one_line(e)
    with pytest.raises(ModelError, match='expected 12 outputs, file has 20'):
        load_model('espnet_p2q8_camvid', weights=str(v1))

    notdict = tmp_path / 'list.pth'
    torch.save([torch.zeros(3)], notdict)
    with pytest.raises(ModelError, match='not a state dict'):
        load_model(str(notdict))
    unknown = tmp_path / 'other.pth'
    torch.save({'fc.weight': torch.zeros(3, 3)}, unknown)
    with pytest.raises(ModelError, match='not a known architecture'):
        load_model(str(unknown))


def test_bad_specs(tmp_path):
    with pytest.raises(ModelError, match='unknown model'):
        load_model('espnetv9_huge')
    with pytest.raises(ConfigError, match='backend'):
        load_model('espnetv2_s0.5', backend='tensorrt')
    with pytest.raises(ConfigError, match='device'):
        load_model('espnetv2_s0.5', device='tpu')
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match='CUDA'):
            load_model('espnetv2_s0.5', device='cuda')
    cfg = tmp_path / 'bad.yaml'
    cfg.write_text('arch: espnetv2\nwidth: 3.0\n')
    with pytest.raises(ModelError, match='width'):
        load_model(str(cfg))
    cfg.write_text('arch: espnetv2\nwidht: 2.0\n')
    with pytest.raises(ModelError, match='unknown keys widht'):
        load_model(str(cfg))
    cfg.write_text('arch: [unclosed\n')
    with pytest.raises(ModelError, match='not valid yaml'):
        load_model(str(cfg))
    assert issubclass(ModelError, VidsegError)


def test_model_config_yaml_roundtrip(tmp_path):
    import yaml
    cfg = REGISTRY['espnet_p2q8_camvid'][1]
    p = tmp_path / 'c.yaml'
    p.write_text(yaml.safe_dump(cfg.to_dict()))
    back = ModelConfig.from_yaml(p)
    assert back == cfg
    # ESPNet defaults (BGR, normalise before resize, scale after) apply when not given
    p.write_text('arch: espnet\np: 2\nq: 3\n')
    c = ModelConfig.from_yaml(p)
    assert c.channel_order == 'BGR' and c.normalise_before_resize and not c.scale_before_normalise


def test_default_model(shared, tmp_path, monkeypatch, caplog):
    import vidseg_ros.core.models as models
    monkeypatch.setattr(models, 'WEIGHTS_DIR', tmp_path)
    with caplog.at_level(logging.WARNING):
        m = load_model('default', backend='torch')
    assert m.name == 'espnetv2_s2.0' and 'falling back' in caplog.text
    net = ESPNetv2Seg(0.5, 20)
    torch.save(net.state_dict(), tmp_path / 'default.pt')
    (tmp_path / 'default.yaml').write_text('name: compact\narch: espnetv2\nwidth: 0.5\n'
                                          'input_size: [512, 256]\n'
                                          'output_to_class: [0,1,2,3,4,5,6,7,8,9,10,11,12,13,'
                                          '14,15,16,17,18,255]\n')
    m = load_model(None, backend='torch')
    assert m.name == 'compact' and m.config.width == 0.5 and m.input_size == (512, 256)
    sd = load_state_dict(tmp_path / 'default.pt')
    assert all(torch.equal(sd[k], v) for k, v in m.net.state_dict().items())


def test_config_spec_and_state_dict_path(shared):
    m = load_model('espnet_p2q3', backend='torch')
    again = load_model(m.config, backend='torch')
    assert again.config == m.config
    p = load_model(str(shared / 'models' / 'espnet' / 'espnet_p_2_q_3.pth'), backend='torch')
    assert p.config.q == 3 and p.config.channel_order == 'BGR'
