"""VideoSegmenter on small frames (stub network) and the ``vidseg`` CLI end to end."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vidseg_ros.cli import main as cli_main
from vidseg_ros.core.models import KeyframeModel, ModelConfig
from vidseg_ros.core.pipeline import VideoSegmenter, working_size
from vidseg_ros.core.propagation import LowResNetworkRefiner
from vidseg_ros.core.schedule import OperatingPoint

REPO = Path(__file__).resolve().parent.parent


class ColourNet(KeyframeModel):
    """Stub keyframe network: class = dominant colour channel (0 red, 1 green, 2 blue, 3 dark)."""

    def __init__(self, size=(48, 32)):
        super().__init__(ModelConfig(name='colournet', arch='torchscript', input_size=size, num_outputs=4,
                                     mean=(0, 0, 0), std=(1, 1, 1), scale=1.0,
                                     output_to_class=(0, 1, 2, 3)))
        self.calls = 0

    def _infer(self, x):
        self.calls += 1
        t = torch.from_numpy(x)[0] / 255.0
        dark = 0.35 - t.max(0).values
        return (torch.cat([t, dark[None]], 0) * 20.0)[None]


def scene(t, size=(96, 64), speed=2):
    """Coloured vertical bands moving right by ``speed`` px per frame, plus texture for the flow."""
    w, h = size
    xs = (np.arange(w) - speed * t) % 48
    cls = np.select([xs < 12, xs < 24, xs < 36], [0, 1, 2], 3)
    pal = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [20, 20, 20]], np.uint8)
    img = np.broadcast_to(pal[cls][None], (h, w, 3)).astype(np.int16)
    rng = np.random.default_rng(0)
    tex = rng.integers(-25, 25, (h, w + 200)).astype(np.int16)
    img = img + tex[:, 100 - speed * t:100 - speed * t + w, None]
    return np.clip(img, 0, 255).astype(np.uint8), np.broadcast_to(cls[None], (h, w)).astype(np.uint8)


def test_pipeline_fixed_schedule_warps_and_times():
    net = ColourNet()
    op = OperatingPoint('t', scale=2, interval=3, warp=True, refine=False)
    vs = VideoSegmenter(net, op)
    kfs, agree = [], []
    for t in range(8):
        img, gt = scene(t)
        out = vs.process(img)
        kfs.append(out.is_keyframe)
        assert out.labels.shape == (64, 96) and out.labels.dtype == np.uint8
        assert out.distance == t % 3 and not out.degraded
        assert out.confidence.shape == (32, 48)
        agree.append((out.labels == gt).mean())
        assert 'total' in out.timings and 'upsample' in out.timings
        if out.is_keyframe:
            assert 'keyframe' in out.timings
        else:
            assert {'flow', 'warp', 'iam'} <= set(out.timings)
    assert kfs == [True, False, False, True, False, False, True, False]
    assert net.calls == 3
    assert min(agree) > 0.8, agree        # flow at 12x8 (DIS native) limits this tiny case
    hold = VideoSegmenter(ColourNet(), OperatingPoint('h', scale=2, interval=3, warp=False))
    agree_hold = [(hold.process(scene(t)[0]).labels == scene(t)[1]).mean() for t in range(8)]
    assert np.mean(agree) > np.mean(agree_hold) + 0.05, (agree, agree_hold)
    s = vs.summary()
    assert s['frames'] == 8 and s['keyframes'] == 3 and s['propagated'] == 5
    assert s['mean_propagated_s'] < s['mean_s']['total'] * 8
    assert working_size((2048, 1024), 2) == (1024, 512)


def test_pipeline_hold_mode_and_resolution_change():
    net = ColourNet()
    vs = VideoSegmenter(net, OperatingPoint('h', scale=1, interval=4, warp=False))
    first = vs.process(scene(0)[0]).labels.copy()
    for t in range(1, 4):
        out = vs.process(scene(t)[0])
        assert not out.is_keyframe and np.array_equal(out.labels, first) and 'flow' not in out.timings
    small = cv2.resize(scene(4)[0], (80, 48), interpolation=cv2.INTER_AREA)
    out = vs.process(small)
    assert out.is_keyframe and out.labels.shape == (48, 80) and vs.resets == 1


def test_pipeline_adaptive_schedule_sees_iam():
    net = ColourNet()
    vs = VideoSegmenter(net, OperatingPoint('a', scale=2, interval=10),
                        schedule={'type': 'adaptive', 'max_interval': 10, 'min_interval': 2,
                                  'inconsistency_threshold': 0.0})
    kfs = [vs.process(scene(t)[0]).is_keyframe for t in range(7)]
    # threshold 0: every propagated frame reports an inconsistent fraction >= 0 -> keyframe at distance 2
    assert kfs == [True, False, True, False, True, False, True]
    vs.set_schedule('fixed:100')
    assert vs.process(scene(7)[0]).is_keyframe           # a fresh schedule starts with a keyframe
    assert not vs.process(scene(8)[0]).is_keyframe


def test_pipeline_refine_builds_stand_in_refiner():
    net = ColourNet()
    calls = []

    def refiner(image, warped, mask):
        calls.append(image.shape)
        return np.full(warped.probs.shape, 0.25, np.float32)

    vs = VideoSegmenter(net, OperatingPoint('r', scale=2, interval=5, refine=True), refiner=refiner)
    for t in range(5):
        vs.process(scene(t, speed=5)[0])
    assert vs.propagator.refiner is refiner
    assert all(s == (32, 48, 3) for s in calls)
    # without an explicit refiner the low-resolution network stand-in is used
    vs2 = VideoSegmenter(ColourNet(), OperatingPoint('r', scale=2, interval=5, refine=True))
    assert isinstance(vs2.refiner, LowResNetworkRefiner)
    with pytest.raises(Exception, match='RGB uint8'):
        vs2.process(np.zeros((10, 10), np.uint8))


def _cityscapes_frames(shared, n):
    seq = shared / 'data' / 'cityscapes_seq' / 'seq0000'
    files = sorted(seq.glob('*.jpg'))[:n]
    if len(files) < n:
        pytest.skip(f'cityscapes_seq/seq0000 has fewer than {n} frames')
    return seq, files


@pytest.mark.shared
def test_pipeline_real_model(shared):
    from vidseg_ros.core.io import read_image
    from vidseg_ros.core.models import load_model
    _, files = _cityscapes_frames(shared, 3)
    net = load_model('espnetv2_s0.5_512x256', backend='torch')
    vs = VideoSegmenter(net, OperatingPoint('w', scale=4, interval=2))
    per = []
    outs = []
    for f in files:
        img = read_image(f)
        outs.append(vs.process(img))
        per.append(net.segment(img).labels)
    assert [o.is_keyframe for o in outs] == [True, False, True]
    assert outs[1].labels.shape == (1024, 2048)
    small = cv2.resize(outs[1].labels, (512, 256), interpolation=cv2.INTER_NEAREST)
    assert (small == per[1]).mean() > 0.85


# ------------------------------------------------------------------------------------------ CLI
def _run_cli(argv, capsys):
    rc = cli_main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.shared
def test_cli_run_and_eval_end_to_end(shared, tmp_path, capsys):
    seq, files = _cityscapes_frames(shared, 5)
    src = tmp_path / 'frames'
    src.mkdir()
    for f in files:                          # a 5-frame folder (temporary, outside the repo)
        (src / f.name).symlink_to(f)
    out = tmp_path / 'out'
    rc, so, se = _run_cli(['run', str(src), '--out', str(out), '--model', 'espnetv2_s0.5_512x256',
                           '--backend', 'torch', '--interval', '3', '-q'], capsys)
    assert rc == 0, se
    labels = sorted((out / 'labels').glob('*.png'))
    assert [p.stem for p in labels] == [f.stem for f in files]
    lab = cv2.imread(str(labels[1]), cv2.IMREAD_UNCHANGED)
    assert lab.shape == (1024, 2048) and lab.dtype == np.uint8 and lab.max() < 19
    summ = json.loads((out / 'summary.json').read_text())
    assert summ['frames'] == 5 and summ['keyframes'] == 2
    assert summ['operating_point']['scale'] == 4 and summ['working_size'] == [512, 256]
    assert set(summ['mean_ms']) >= {'flow', 'keyframe', 'warp', 'iam', 'refine', 'total'}
    assert summ['model']['name'] == 'espnetv2_s0.5_512x256' and summ['fps'] > 0
    ov = Path(summ['outputs']['overlay'])
    assert ov.is_file() and ov.stat().st_size > 1000

    rc, so, se = _run_cli(['eval', str(out / 'labels'), str(seq / 'pseudo_labels'), '--classes', 'cityscapes',
                           '--json', str(tmp_path / 'eval.json'), '-q'], capsys)
    assert rc == 0, se
    assert 'mIoU' in so and 'road' in so
    res = json.loads((tmp_path / 'eval.json').read_text())
    assert res['images'] == 5 and res['gt_format'] == 'labelids'
    assert 0.25 < res['miou'] <= 1.0 and res['pixel_accuracy'] > 0.8
    assert res['iou']['road'] > 0.8


@pytest.mark.shared
def test_cli_run_video_max_frames(shared, tmp_path, capsys):
    video = shared / 'data' / 'udacity' / 'test_video.mp4'
    if not video.is_file():
        pytest.skip(f'{video} not found')
    out = tmp_path / 'v'
    rc, so, se = _run_cli(['run', str(video), '--out', str(out), '--model', 'espnetv2_s0.5_512x256',
                           '--backend', 'torch', '--max-frames', '3', '--no-warp', '--no-overlay', '-q'],
                          capsys)
    assert rc == 0, se
    assert sorted(p.name for p in (out / 'labels').glob('*.png')) == ['000000.png', '000001.png', '000002.png']
    summ = json.loads((out / 'summary.json').read_text())
    assert summ['frames'] == 3 and summ['operating_point']['warp'] is False
    assert not (out / 'overlay.mp4').exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    rc, so, se = _run_cli(['run', str(tmp_path / 'nope.mp4'), '--out', str(tmp_path / 'o')], capsys)
    assert rc == 2 and se.startswith('error: ') and 'not found' in se and 'Traceback' not in se
    assert len(se.strip().splitlines()) == 1
    img_dir = tmp_path / 'imgs'
    img_dir.mkdir()
    cv2.imwrite(str(img_dir / 'a.png'), np.zeros((16, 16, 3), np.uint8))
    rc, so, se = _run_cli(['run', str(img_dir), '--out', str(tmp_path / 'o'), '--model', 'no_such_model'],
                          capsys)
    assert rc == 2 and se.startswith('error: ') and 'no_such_model' in se
    rc, so, se = _run_cli(['run', str(img_dir), '--out', str(tmp_path / 'o'), '--model',
                           str(tmp_path / 'missing.pth')], capsys)
    assert rc == 2 and 'missing.pth' in se and len(se.strip().splitlines()) == 1
    (tmp_path / 'gt').mkdir()
    cv2.imwrite(str(tmp_path / 'gt' / 'b.png'), np.zeros((16, 16), np.uint8))
    rc, so, se = _run_cli(['eval', str(img_dir), str(tmp_path / 'gt')], capsys)
    assert rc == 2 and 'matches' in se
    rc, so, se = _run_cli(['eval', str(img_dir), str(tmp_path / 'nogt')], capsys)
    assert rc == 2 and 'not found' in se
    rc, so, se = _run_cli(['run', str(img_dir), '--out', str(tmp_path / 'o'), '--schedule', 'fixed:0'],
                          capsys)
    assert rc == 2 and 'interval' in se


def test_cli_eval_matches_stems_and_formats(tmp_path, capsys):
    pred, gt = tmp_path / 'pred', tmp_path / 'gt'
    pred.mkdir()
    gt.mkdir()
    p = np.zeros((8, 8), np.uint8)
    p[:, 4:] = 13                                    # car (train id 13)
    g = np.full((8, 8), 7, np.uint8)                 # road label id 7 -> train id 0
    g[:, 4:] = 26                                    # car label id 26
    g[0, 0] = 0                                      # unlabeled -> ignored
    cv2.imwrite(str(pred / 'aachen_000000_000019_leftImg8bit.png'), p)
    cv2.imwrite(str(gt / 'aachen_000000_000019_gtFine_labelIds.png'), g)
    rc, so, se = _run_cli(['eval', str(pred), str(gt), '--json', str(tmp_path / 'r.json'), '-q'], capsys)
    assert rc == 0, se
    r = json.loads((tmp_path / 'r.json').read_text())
    assert r['images'] == 1 and abs(r['miou'] - 1.0) < 1e-9 and r['iou']['road'] == 1.0
    rc, so, se = _run_cli(['eval', str(pred), str(gt), '--gt-format', 'trainids', '--json',
                           str(tmp_path / 'r2.json'), '-q'], capsys)
    assert rc == 0 and json.loads((tmp_path / 'r2.json').read_text())['miou'] < 0.5
    # ground truth with no labelled pixel (all label id 0, unlabeled): no score, a warning, strict JSON
    cv2.imwrite(str(gt / 'aachen_000000_000019_gtFine_labelIds.png'), np.zeros((8, 8), np.uint8))
    rc, so, se = _run_cli(['eval', str(pred), str(gt), '--json', str(tmp_path / 'r3.json'), '-q'], capsys)
    assert rc == 0 and 'pixel accuracy  n/a' in so and 'nan' not in so
    assert 'warning: no labelled pixel in the ground truth of 1 image(s)' in se and '--gt-format labelids' in se
    text = (tmp_path / 'r3.json').read_text()
    assert 'NaN' not in text and json.loads(text)['miou'] is None and json.loads(text)['pixel_accuracy'] is None


def test_cli_delegates_and_help(tmp_path, capsys):
    rc, so, se = _run_cli(['synth', '--out', str(tmp_path / 's'), '--frames', '2', '--size', '64x48',
                           '--quiet'], capsys)
    assert rc == 0, se
    assert any((tmp_path / 's').rglob('*.png'))
    with pytest.raises(SystemExit) as e:
        cli_main(['bench-backends', '--help'])
    assert e.value.code == 0
    assert 'usage' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(['--help'])
    out = capsys.readouterr().out
    for cmd in ('run', 'eval', 'bench', 'synth', 'bench-backends'):
        assert cmd in out


def test_cli_subprocess_exit_code(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'vidseg_ros.cli', 'run', str(tmp_path / 'missing'),
                        '--out', str(tmp_path / 'o')], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith('error: input not found') and 'Traceback' not in r.stderr


def _bench_snippets(root, seqs=('seqA', 'seqB'), frames=6, size=(96, 64)):
    """cityscapes_seq-like snippet folders of the moving-band scene (pseudo labels in label ids)."""
    to_labelid = np.array([7, 8, 11, 12], np.uint8)      # label ids of train ids 0..3
    for j, s in enumerate(seqs):
        (root / s / 'pseudo_labels').mkdir(parents=True)
        for t in range(frames):
            img, gt = scene(t + 3 * j, size)
            stem = f'{s}_{t:06d}_leftImg8bit'
            cv2.imwrite(str(root / s / f'{stem}.png'), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / s / 'pseudo_labels' / f'{stem}.png'), to_labelid[gt])
    return root


def test_bench_on_tiny_synthetic_snippets(tmp_path):
    from vidseg_ros.core.bench import run_bench
    data = _bench_snippets(tmp_path / 'seqdata')
    res = run_bench(model=ColourNet(), data=data, frames=6, scale=2, out=tmp_path / 'b', progress=False)
    rows = {r['name']: r for r in res['rows']}
    assert list(rows)[:2] == ['per_frame', 'warp_s2'] and 'warp_iam_s5' in rows and 'hold_s5' in rows
    assert rows['per_frame']['keyframes'] == 12 and rows['warp_s5']['keyframes'] == 4
    assert rows['per_frame']['miou_drop'] == 0.0 and rows['per_frame']['speedup'] == 1.0
    assert rows['per_frame']['miou'] > 60
    # warping follows the moving bands better than holding the keyframe labels
    assert rows['warp_s5']['miou'] > rows['hold_s5']['miou']
    assert rows['warp_s5']['prop_over_keyframe'] is not None and rows['warp_s5']['tc'] > 0
    assert set(rows['warp_s5']['miou_by_distance']) == {0, 1, 2, 3, 4}
    # two-sided rows: the same keyframes, the next keyframe carried back and fused in, charged for it
    two = rows['two_sided_s5']
    assert two['keyframes'] == 4 and two['label'].endswith('2-sided')
    assert two['miou'] > rows['warp_s5']['miou'], (two['miou'], rows['warp_s5']['miou'])
    assert two['propagated_stage_ms']['two_sided'] > 0
    # and without the chains' trust: same keyframes, the fusion of sessions 7-9
    plain = rows['two_sided_s5_no_trust']
    assert plain['keyframes'] == 4 and plain['label'].endswith('2-sided no-trust')
    assert plain['operating_point']['trust'] is False and two['operating_point']['trust'] is True
    for f in ('bench.json', 'bench.md', 'accuracy_vs_distance.png', 'speed_vs_accuracy.png'):
        assert (tmp_path / 'b' / f).is_file()
    assert '| warp_s5 |' in (tmp_path / 'b' / 'bench.md').read_text()


def test_bench_two_sided_delay_rows(tmp_path):
    """`vidseg bench --two-sided-delays`: two-sided S=5 with a bounded wait. Delay 0 releases every frame
    forward-only, so it is causal warp_s5 exactly; a delay of 2 fuses only the last two frames before
    each keyframe."""
    from vidseg_ros.core.bench import run_bench
    from vidseg_ros.core.errors import ConfigError
    data = _bench_snippets(tmp_path / 'seqdata', frames=6)
    res = run_bench(model=ColourNet(), data=data, frames=6, scale=2, out=tmp_path / 'b', progress=False,
                    refine=False, two_sided_delays=(2, 0, 2))
    rows = {r['name']: r for r in res['rows']}
    assert [n for n in rows if '_d' in n] == ['two_sided_s5_d0', 'two_sided_s5_d2']
    d0, d2, warp, two = (rows[n] for n in ('two_sided_s5_d0', 'two_sided_s5_d2', 'warp_s5', 'two_sided_s5'))
    assert d2['operating_point']['max_delay'] == 2 and d2['label'].endswith('2-sided max-delay 2')
    assert d0['keyframes'] == d2['keyframes'] == warp['keyframes'] == 4
    assert d0['miou'] == warp['miou'] and d0['iou'] == warp['iou']
    assert warp['miou'] < d2['miou'] <= two['miou'] + 1e-9, (warp['miou'], d2['miou'], two['miou'])
    # by distance: frames 1 and 2 after a keyframe are causal in d2, frames 3 and 4 fused
    for d in (1, 2):
        assert d2['miou_by_distance'][d] == warp['miou_by_distance'][d]
    assert d2['miou_by_distance'][4] == two['miou_by_distance'][4]
    with pytest.raises(ConfigError, match='max_delay'):
        run_bench(model=ColourNet(), data=data, frames=6, out=tmp_path / 'c', progress=False, refine=False,
                  two_sided_delays=(-1,))
    with pytest.raises(ConfigError, match='two_sided=True'):
        OperatingPoint('x', 2, 5, True, False, max_delay=2)
    assert OperatingPoint.from_dict(d2['operating_point']).max_delay == 2


def test_flow_limits_on_snippets(tmp_path, capsys):
    """`vidseg flow-limits`: pseudo labels (and a network's labels) carried along the backward DIS field
    follow the moving bands: better than holding them, worse with distance; JSON, table, plot, errors."""
    from vidseg_ros.core import synth_analysis as sa
    from vidseg_ros.core.errors import ConfigError, InputError
    from vidseg_ros.core.metrics import ConfusionMatrix
    data = _bench_snippets(tmp_path / 'seqdata', frames=6)
    res = sa.real_limits(data, frames=6, scale=1, flows=('ultrafast', 'fast:patch_stride=2'), max_distance=3,
                         model=ColourNet(), progress=False)
    assert res['columns'] == ['pseudo/ultrafast', 'pseudo/fast:patch_stride=2',
                              'network/ultrafast', 'network/fast:patch_stride=2']
    held = {1: ConfusionMatrix(19), 3: ConfusionMatrix(19)}   # the pseudo labels held instead of carried
    for j in range(2):
        for t in range(6):
            for d in held:
                if t + d < 6:
                    held[d].update(scene(t + 3 * j)[1], scene(t + d + 3 * j)[1])
    for c in res['columns']:
        m = res['miou_by_distance'][c]
        assert sorted(m) == [0, 1, 2, 3]
        assert m[0] > 0.99, (c, m)                       # scale 1: the labels themselves
        assert m[1] > held[1].miou() + 0.1, (c, m, held[1].miou())
        assert m[3] > held[3].miou() + 0.1 and m[3] <= m[1] + 1e-9, (c, m)
    assert res['class_iou_by_distance']['pseudo/ultrafast'][1]['road'] > 0.8
    assert res['flow_ms_per_field']['ultrafast'] > 0
    assert sa.real_main(['--data', str(data), '--frames', '4', '--scale', '1', '--max-distance', '1',
                         '--flows', 'ultrafast', 'farneback', '--out', str(tmp_path / 'o'), '--quiet']) == 0
    js = json.loads((tmp_path / 'o' / 'flow_limits.json').read_text())
    assert js['columns'] == ['pseudo/ultrafast', 'pseudo/farneback']
    assert set(js['miou_by_distance']['pseudo/ultrafast']) == {'0', '1'}
    assert js['miou_by_distance']['pseudo/farneback']['1'] > 0.9   # Farneback carries them too (held: ~0.71)
    assert (tmp_path / 'o' / 'flow_limits.png').stat().st_size > 1000
    out = capsys.readouterr().out
    assert 'loss at distance 1' in out and 'pseudo/ultrafast' in out
    with pytest.raises(ConfigError, match='preset'):
        sa.real_limits(data, frames=4, flows=('slowest',), progress=False)
    with pytest.raises(ConfigError, match='KEY=VALUE'):
        sa.real_limits(data, frames=4, flows=('ultrafast:finest_scale',), progress=False)
    with pytest.raises(InputError, match='cityscapes_seq not found'):
        sa.real_limits(tmp_path / 'nowhere', progress=False)
    for bad in (0, 1.5, 'two'):
        with pytest.raises(ConfigError, match='scale'):
            sa.real_limits(data, frames=4, scale=bad, progress=False)


def test_bench_flow_params(tmp_path):
    """`vidseg bench --flow-param`: explicit DIS parameters reach the flow estimator and the JSON;
    malformed or unknown ones are refused with a clear error."""
    from vidseg_ros.core.bench import parse_flow_params, run_bench
    from vidseg_ros.core.errors import ConfigError
    assert parse_flow_params(['use_mean_normalization=false', 'variational_refinement_iterations=2',
                              'alpha=2.0']) == {'use_mean_normalization': False,
                                                'variational_refinement_iterations': 2, 'alpha': 2.0}
    assert parse_flow_params(None) == {}
    for bad in (['alpha'], ['=2'], ['alpha=fast']):
        with pytest.raises(ConfigError, match='--flow-param'):
            parse_flow_params(bad)
    data = _bench_snippets(tmp_path / 'seqdata', seqs=('seqA',), frames=4)
    res = run_bench(model=ColourNet(), data=data, frames=4, scale=2, out=tmp_path / 'b', progress=False,
                    refine=False, flow_params={'variational_refinement_iterations': 2, 'alpha': 2.0})
    assert res['flow']['params'] == {'variational_refinement_iterations': 2, 'alpha': 2.0}
    assert res['flow']['variational_refinement_iterations'] == 2
    with pytest.raises(ConfigError, match='unknown DIS parameter'):
        run_bench(model=ColourNet(), data=data, frames=4, out=tmp_path / 'c', progress=False,
                  flow_params={'magic': 1})


def test_schedule_study_scores_schedules_like_the_bench(tmp_path):
    """`vidseg bench-schedules`: a schedule scored from the pair matrices equals the bench's own row on the same
    frames (fixed S=2, S=5); the oracle at a budget is never below fixed and keeps the budget; triggers are
    causal (lag) and the budget threshold is the smallest within it."""
    from vidseg_ros.core import schedule_bench as sb
    from vidseg_ros.core.bench import run_bench
    from vidseg_ros.core.errors import ConfigError
    data = _bench_snippets(tmp_path / 'seqdata', frames=8)
    net = ColourNet()
    res = run_bench(model=net, data=data, frames=8, scale=2, out=tmp_path / 'b', progress=False, refine=False)
    rows = {r['name']: r for r in res['rows']}
    study = sb.pair_study(net, data, ['seqA', 'seqB'], frames=8, scale=2, progress=False)
    assert study.frames == {'seqA': 8, 'seqB': 8}
    for S in (2, 5):
        m, n = study.score(sb.fixed(study, S))
        assert n == rows[f'warp_s{S}']['keyframes']
        assert 100 * m == pytest.approx(rows[f'warp_s{S}']['miou'], abs=1e-6)
    pf, n = study.score({s: range(8) for s in study.seqs})
    assert n == 16 and 100 * pf == pytest.approx(rows['per_frame']['miou'], abs=1e-6)
    # oracle: same budget, never worse than the fixed schedule it starts from
    sched, m, _ = sb.oracle(study, 4, start=sb.fixed(study, 5))
    assert sum(len(v) for v in sched.values()) == 4 and all(v[0] == 0 for v in sched.values())
    assert m >= study.score(sb.fixed(study, 5))[0] - 1e-12
    for budget in (3, 6):   # a start over / under the budget is trimmed / filled to it
        sched, m, _ = sb.oracle(study, budget, start=sb.fixed(study, 5))
        assert sum(len(v) for v in sched.values()) == budget and study.score(sched) == (pytest.approx(m), budget)
    with pytest.raises(ConfigError, match='less than one per snippet'):
        sb.oracle(study, 1)
    # triggers: always-true evidence fires every frame with lag 0, every other frame with lag 1
    assert sb.trigger(study, 'motion', -1.0, lag=0)['seqA'] == list(range(8))
    assert sb.trigger(study, 'motion', -1.0, lag=1)['seqA'] == [0, 2, 4, 6]
    assert sb.trigger(study, 'motion', 1e9)['seqA'] == [0]
    assert study.evidence('motion', 'seqA', 0, 3) == pytest.approx(sum(study.frame_signals['seqA']['motion'][1:4]))
    assert 0.5 < study.frame_signals['seqA']['motion'][1] < 3.0   # the bands move 2 px per frame (1 at D=2)
    curve = [(0.5, 9, 0.1), (1.0, 6, 0.2), (2.0, 4, 0.3), (3.0, 3, 0.4)]
    assert sb.within_budget(curve, 6) == (1.0, 6, 0.2) and sb.within_budget(curve, 2) is None
    with pytest.raises(ConfigError, match='unknown trigger signal'):
        study.evidence('magic', 'seqA', 0, 1)
    assert set(study.iam_objects['seqA']) == set(study.iam['seqA'])
    # object pixels the IAM flags: the mask (any resolution) is resized to the labels
    labels = np.zeros((4, 8), np.uint8)
    labels[:, :2] = 13                      # car
    labels[:, 2:4] = 5                      # pole
    mask = np.zeros((2, 4), np.float32)
    mask[:, 0] = 1.0                        # flags the car columns only
    assert sb._flagged_objects(mask, labels, np.array([5, 13])) == pytest.approx(0.25)
    assert sb._flagged_objects(mask, labels, np.array([5])) == 0.0
    assert sb._flagged_objects(None, labels, np.array([5])) == 0.0
    out = sb.run(study, intervals=(4,), fixed_intervals=(2, 4), signals=('iam', 'motion'), progress=False)
    b = out['budgets']['4']
    assert b['budget'] == 4 and b['rows']['oracle']['miou'] >= b['rows']['fixed']['miou'] - 1e-12
    assert {'fixed', 'oracle', 'oracle_counts'} <= set(b['rows'])
    assert 0 < b['rows']['fixed']['pixel_accuracy'] <= out['per_frame']['pixel_accuracy'] <= 1
    assert len(b['rows']['oracle']['iou']) == study.num_classes
    assert 'budget of fixed S=4: 4 keyframes' in sb.format_table(out)
    assert sb.plot(out, tmp_path / 's.png').stat().st_size > 1000
    # the thin-object oracle: same pairs; keyframes unchanged; its fixed-S row and box area are reported
    assert set(study.cm_thin['seqA']) == set(study.cm['seqA'])
    assert all(np.array_equal(study.cm_thin[s][(t, t)][0], study.cm[s][(t, t)][0]) for s in study.seqs for t in range(8))
    th = out['thin_oracle']['4']
    assert th['keyframes'] == 4 and 0.0 <= th['box_area'] <= 1.0
    assert 100 * th['miou'] == pytest.approx(100 * study.score(sb.fixed(study, 4), thin_oracle=True)[0])
    assert th['fixed_drop'] == pytest.approx(b['rows']['fixed']['drop'])
    assert 'where the loss sits' in sb.format_table(out)


def test_thin_object_oracle_pastes_only_thin_pixels_in_boxes():
    """`paste_thin_oracle`: inside the boxes around the warped thin objects, pixels that either map calls thin
    take the frame's own labels; everything else (outside the boxes, or thin in neither map) stays warped."""
    from vidseg_ros.core import schedule_bench as sb
    from vidseg_ros.core.errors import InputError
    thin = sb.THIN_CLASSES['cityscapes']
    warped = np.zeros((40, 60), np.uint8)          # road
    warped[5:35, 20:23] = 5                        # a pole, drawn 3 px too far right
    warped[:, 50:] = 13                            # a car far away from it
    frame = np.zeros_like(warped)
    frame[5:35, 17:20] = 5                         # where the pole really is
    frame[:, 50:] = 2                              # the frame's network disagrees about the car: not thin
    frame[0:3, 0:3] = 11                           # a person outside any box: not pasted
    box = sb.thin_box_mask(warped, thin, dilate=1, margin=2)
    assert box[5:35, 17:23].all() and not box[:, 45:].any() and box.mean() < 0.25
    out, area = sb.paste_thin_oracle(warped, frame, thin, dilate=1, margin=2)
    assert area == pytest.approx(box.mean())
    assert (out[5:35, 17:20] == 5).all() and (out[5:35, 20:23] == 0).all()   # the pole moved to the frame's place
    assert (out[:, 50:] == 13).all() and (out[0:3, 0:3] == 0).all()
    assert not sb.thin_box_mask(np.zeros((8, 8), np.uint8), thin).any()
    assert not sb.thin_box_mask(warped, ()).any()
    tiny = np.zeros((20, 20), np.uint8)
    tiny[3, 3] = 5                                 # 1 px (9 px dilated by 1): under min_area
    assert not sb.thin_box_mask(tiny, thin, dilate=1).any()
    with pytest.raises(InputError, match='differ in size'):
        sb.paste_thin_oracle(warped, frame[:20], thin)


@pytest.mark.shared
def test_bench_schedules_cli(shared, tmp_path, capsys):
    data = _bench_snippets(tmp_path / 'seqdata', frames=4)
    out = tmp_path / 'sched'
    assert cli_main(['bench-schedules', '--data', str(data), '--model', 'espnetv2_s0.5_512x256', '--frames', '4',
                     '--intervals', '2', '--signals', 'motion', 'iam_sum', '--out', str(out), '-q']) == 0
    res = json.loads((out / 'schedules.json').read_text())
    assert res['config']['model'].startswith('espnetv2_s0.5') and res['config']['frames'] == 8
    assert res['budgets']['2']['budget'] == 4 and set(res['curves']) == {'motion', 'iam_sum'}
    assert (out / 'schedules.png').stat().st_size > 1000
    assert 'budget of fixed S=2' in (out / 'schedules.txt').read_text() and 'wrote' in capsys.readouterr().out


def test_bench_schedules_cli_errors(tmp_path, capsys):
    assert cli_main(['bench-schedules', '--data', str(tmp_path / 'nope'), '-q']) == 2
    assert 'cityscapes_seq not found' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert cli_main(['bench-schedules', '--data', str(tmp_path / 'empty'), '-q']) == 2
    assert 'no snippet folders' in capsys.readouterr().err
    assert cli_main(['bench-schedules', '--frames', '1']) == 2
    assert '--frames must be >= 2' in capsys.readouterr().err


@pytest.mark.shared
def test_bench_iam_rows_with_a_learned_refiner(shared, tmp_path):
    """`vidseg bench --refiner refiner`: the warp_iam rows run the packaged EVS refiner (its cost is
    measured on every propagated frame); a model whose class planes do not match is refused clearly."""
    from vidseg_ros.core.bench import run_bench
    from vidseg_ros.core.errors import VidsegError
    from vidseg_ros.core.models import load_model
    data = _bench_snippets(tmp_path / 'seqdata', seqs=('seqA',), frames=6, size=(128, 64))
    net = load_model('espnetv2_s0.5_512x256', input_size=(128, 64), backend='torch')
    res = run_bench(model=net, data=data, frames=6, scale=1, refiner='refiner', out=tmp_path / 'b',
                    progress=False)
    rows = {r['name']: r for r in res['rows']}
    assert res['refiner'] == {'type': 'EVSRefiner', 'mode': 'refiner'}
    assert rows['warp_iam_s5']['keyframes'] == 2 and rows['warp_iam_s5']['propagated_stage_ms']['refine'] > 0
    assert 'refine' not in rows['warp_s5']['propagated_stage_ms'] or rows['warp_s5']['propagated_stage_ms']['refine'] == 0
    with pytest.raises(VidsegError, match='classes'):
        run_bench(model=ColourNet(), data=data, frames=6, refiner='refiner', out=tmp_path / 'c', progress=False)
    res = run_bench(model=net, data=data, frames=6, scale=1, refiner='region', out=tmp_path / 'd',
                    progress=False)
    rows = {r['name']: r for r in res['rows']}
    assert res['refiner'] == {'type': 'RegionRefresher', 'mode': 'region', 'shape': 'strip'}
    assert rows['warp_iam_s5']['propagated_stage_ms']['refine'] > 0
    res = run_bench(model=net, data=data, frames=6, scale=1, refiner='region-tile', out=tmp_path / 'e',
                    progress=False, refine=True)
    assert res['refiner'] == {'type': 'RegionRefresher', 'mode': 'region-tile', 'shape': 'tile'}
    tile_rows = {r['name']: r for r in res['rows']}
    assert tile_rows['warp_s5']['miou'] == rows['warp_s5']['miou']     # only the refined rows differ
    res = run_bench(model=net, data=data, frames=6, scale=1, refiner='region-ctx', out=tmp_path / 'f',
                    progress=False)
    ctx_rows = {r['name']: r for r in res['rows']}
    refined = sum(r['frames'] - r['keyframes'] for n, r in ctx_rows.items()
                  if n.startswith('warp_iam') or n == 'two_sided_iam_s5')
    assert ctx_rows['two_sided_iam_s5']['propagated_stage_ms']['refine'] > 0   # refined, then fused
    assert ctx_rows['two_sided_iam_s5']['propagated_stage_ms']['two_sided'] > 0
    assert refined > 0 and res['refiner'] == {'type': 'ContextRegionRefresher', 'mode': 'region-ctx',
                                              'shape': 'strip', 'context_used': refined, 'context_missing': 0}
    assert ctx_rows['warp_s5']['miou'] == rows['warp_s5']['miou']


class NaNNet(ColourNet):
    """ColourNet whose output is NaN on chosen frames: a band of pixels, or (almost) everything."""

    def __init__(self, bad):
        super().__init__()
        self.bad = bad  # call index -> 'band' | 'all'

    def _infer(self, x):
        out = super()._infer(x)
        kind = self.bad.get(self.calls - 1)
        if kind == 'band':
            out[..., :4, :] = float('nan')
        elif kind == 'all':
            out[..., 2:, :] = float('inf') * 0.0
        return out


def test_pipeline_sanitises_nonfinite_network_outputs():
    """NaN/Inf network outputs never reach the labels as a class: a few bad pixels become void, a mostly
    non-finite keyframe is rejected and the frame is propagated from the previous keyframe."""
    net = NaNNet({1: 'band', 2: 'all'})
    vs = VideoSegmenter(net, OperatingPoint('t', scale=1, interval=2, warp=True, refine=False))
    outs = [vs.process(scene(t)[0]) for t in range(6)]
    assert [o.is_keyframe for o in outs] == [True, False, True, False, False, False]
    # frame 2: band of NaN rows at the top of the network output -> void there, the rest classified
    assert (outs[2].labels[:4] == 255).all() and (outs[2].labels[16:] != 255).all()
    # frame 4: keyframe rejected (output NaN almost everywhere) -> propagated from frame 2, not void
    assert not outs[4].is_keyframe and outs[4].distance == 2
    assert (outs[4].labels[16:] != 255).mean() > 0.9
    s = vs.summary()
    assert s['rejected_keyframes'] == 1 and s['nonfinite_pixels'] > 0 and s['keyframes'] == 2


# ------------------------------------------------------------------------------ two-sided propagation
def test_two_sided_segmenter_fuses_the_next_keyframe():
    """Outputs come out in frame order, one per frame, the propagated ones fused with the next keyframe
    carried back; frames after the last keyframe wait, or come out forward-only at the end."""
    from vidseg_ros.core.bidirectional import TwoSidedSegmenter
    from vidseg_ros.core.errors import ConfigError
    op = OperatingPoint('t', scale=2, interval=4, warp=True)
    fwd = VideoSegmenter(ColourNet(), op)
    two = TwoSidedSegmenter(VideoSegmenter(ColourNet(), op))
    frames = [scene(t, speed=3) for t in range(13)]
    f_out, t_out = [], []
    for img, _ in frames:
        f_out.append(fwd.process(img))
        t_out += two.process(img)
    assert len(t_out) == 13            # 12 is the last keyframe: nothing left waiting
    assert two.flush() == []
    assert [o.frame_id for o in t_out] == list(range(13))
    assert [o.lookahead for o in t_out] == [0, 3, 2, 1] * 3 + [0]
    assert all(o.labels.shape == (64, 96) for o in t_out)
    same = [np.array_equal(t_out[i].labels, f_out[i].labels) for i in range(13)]
    assert all(same[0::4])              # keyframes as they were
    assert not all(same[i] for i in range(13) if i % 4), same   # the fusion changed propagated frames
    # (accuracy: test_two_sided_beats_forward_on_real_frames; this tiny scene's 12x8 flow is too coarse)
    s = two.summary()
    assert s['two_sided']['fused'] == 9 and s['two_sided']['forward_only'] == 0 and s['keyframes'] == 4
    assert s['two_sided']['trusted'] == 9
    # the flow pair into a keyframe: the backward field only for the trust's check
    for trust in (True, False):
        t2 = TwoSidedSegmenter(VideoSegmenter(ColourNet(), op), trust=trust)
        for img, _ in frames[:5]:
            t2.process(img)
        bwd, fwd = t2.segmenter.last_flows            # frame 4 is a keyframe
        assert fwd is not None and (bwd is not None) == trust
        assert t2.buffer.stats['trusted'] == (3 if trust else 0)
    # a stream that ends between keyframes: the rest comes out forward-only at flush()
    two = TwoSidedSegmenter(VideoSegmenter(ColourNet(), op), max_delay=2)
    outs = [o for img, _ in frames[:7] for o in two.process(img)]
    outs += two.flush()
    assert [o.frame_id for o in outs] == list(range(7))
    assert [o.lookahead for o in outs] == [0, 0, 2, 1, 0, 0, 0]   # frame 1 waited too long
    with pytest.raises(ConfigError, match='warping'):
        TwoSidedSegmenter(VideoSegmenter(ColourNet(), OperatingPoint('h', 2, 4, warp=False)))
    with pytest.raises(ConfigError, match='two_sided=True fuses warped states from both sides: it needs warp=True'):
        OperatingPoint('x', 2, 4, warp=False, two_sided=True)
    assert OperatingPoint('x', 2, 4, warp=True, refine=True, two_sided=True).label() == 'D2 S4 W+ R+ 2-sided'
    assert OperatingPoint('x', 2, 4, two_sided=True).label() == 'D2 S4 W+ R- 2-sided'
    assert OperatingPoint.from_dict({'name': 'x', 'interval': 3, 'two_sided': True}).two_sided


def test_cli_run_two_sided(tmp_path, capsys, monkeypatch):
    src = tmp_path / 'frames'
    src.mkdir()
    for t in range(8):
        cv2.imwrite(str(src / f'f{t:03d}.png'), cv2.cvtColor(scene(t)[0], cv2.COLOR_RGB2BGR))
    out = tmp_path / 'o'
    import vidseg_ros.core.models as models
    monkeypatch.setattr(models, 'load_model', lambda *a, **k: ColourNet())
    rc, so, se = _run_cli(['run', str(src), '--out', str(out), '--interval', '3', '--two-sided',
                           '--no-overlay', '-q'], capsys)
    assert rc == 0, se
    assert sorted(p.stem for p in (out / 'labels').glob('*.png')) == [f'f{t:03d}' for t in range(8)]
    summ = json.loads((out / 'summary.json').read_text())
    assert summ['frames'] == 8 and summ['keyframes'] == 3
    assert summ['two_sided']['fused'] == 4 and summ['two_sided']['forward_only'] == 1  # frame 7
    assert summ['two_sided']['trust'] is True and summ['two_sided']['trusted'] == 4   # the checks of both chains
    rc, so, se = _run_cli(['run', str(src), '--out', str(tmp_path / 'nt'), '--interval', '3', '--two-sided',
                           '--no-trust', '--no-overlay', '-q'], capsys)
    assert rc == 0, se
    summ = json.loads((tmp_path / 'nt' / 'summary.json').read_text())
    assert summ['two_sided']['trust'] is False and summ['two_sided']['trusted'] == 0 and summ['two_sided']['fused'] == 4
    lab = cv2.imread(str(out / 'labels' / 'f001.png'), cv2.IMREAD_UNCHANGED)
    assert lab.shape == (64, 96) and (lab == scene(1)[1]).mean() > 0.8
    for argv, msg in ((['--max-delay', '2'], '--two-sided only'),
                      (['--no-trust'], '--two-sided only'),
                      (['--two-sided', '--no-warp'], 'needs warping'),
                      (['--two-sided', '--temporal-mode', 'refiner'],
                       'combines with --temporal-mode warp / region / region-ctx only, not refiner')):
        rc, so, se = _run_cli(['run', str(src), '--out', str(tmp_path / 'e'), '-q'] + argv, capsys)
        assert rc == 2 and msg in se and len(se.strip().splitlines()) == 1, se


@pytest.mark.shared
def test_two_sided_beats_forward_on_real_frames(shared, tmp_path):
    """Real frames (one cityscapes_seq snippet, 11 frames, keyframes 0, 5, 10), a real network: fusing the
    next keyframe carried back wins over forward warping at S=5 (measured 32.8 vs 31.9 mIoU)."""
    from vidseg_ros.core.bench import run_bench
    res = run_bench(model='espnetv2_s0.5_512x256', backend='torch', seqs=['seq0002'], frames=11,
                    refine=False, out=tmp_path / 'b', progress=False)
    rows = {r['name']: r for r in res['rows']}
    two, warp = rows['two_sided_s5'], rows['warp_s5']
    assert two['keyframes'] == warp['keyframes'] == 3
    assert two['miou'] > warp['miou'] + 0.4, (two['miou'], warp['miou'])
    assert two['tc'] > rows['per_frame']['tc']


def test_cli_run_skips_unreadable_frames_and_lists_them(tmp_path, capsys, monkeypatch):
    """A corrupt image in the middle of a folder: the run goes on, the frame has no label file, a warning
    names it and summary.json lists it (--strict: stop there with a one-line error); a folder of nothing
    readable is a clear error."""
    src = tmp_path / 'frames'
    src.mkdir()
    for t in range(6):
        cv2.imwrite(str(src / f'f{t:03d}.png'), cv2.cvtColor(scene(t)[0], cv2.COLOR_RGB2BGR))
    (src / 'f002.png').write_bytes(b'not a png')
    import vidseg_ros.core.models as models
    monkeypatch.setattr(models, 'load_model', lambda *a, **k: ColourNet())
    for extra in ([], ['--two-sided']):
        out = tmp_path / ('o' + ''.join(extra))
        rc, so, se = _run_cli(['run', str(src), '--out', str(out), '--interval', '2', '--no-overlay', '-q'] + extra,
                              capsys)
        assert rc == 0, se
        assert sorted(p.stem for p in (out / 'labels').glob('*.png')) == ['f000', 'f001', 'f003', 'f004', 'f005']
        summ = json.loads((out / 'summary.json').read_text())
        assert summ['frames'] == 5
        assert summ['skipped_frames'] == [{'index': 2, 'stem': 'f002',
                                           'error': f'cannot read image (corrupt or not an image): {src / "f002.png"}'}]
        assert 'warning: frame f002 skipped: cannot read image' in se
        assert 'warning: 1 unreadable frame(s) skipped, no labels for them: f002' in se
        lab = cv2.imread(str(out / 'labels' / 'f003.png'), cv2.IMREAD_UNCHANGED)
        assert (lab == scene(3)[1]).mean() > 0.8      # the frames after the gap are still labelled right
    rc, so, se = _run_cli(['run', str(src), '--out', str(tmp_path / 's'), '--strict', '--no-overlay', '-q'], capsys)
    assert rc == 2 and se.strip() == f'error: cannot read image (corrupt or not an image): {src / "f002.png"}'
    # --max-frames counts input frames, the unreadable one too
    rc, so, se = _run_cli(['run', str(src), '--out', str(tmp_path / 'm'), '--max-frames', '4', '--no-overlay', '-q'],
                          capsys)
    assert rc == 0 and json.loads((tmp_path / 'm' / 'summary.json').read_text())['frames'] == 3
    bad = tmp_path / 'bad'
    bad.mkdir()
    for t in range(2):
        (bad / f'b{t}.png').write_bytes(b'junk')
    rc, so, se = _run_cli(['run', str(bad), '--out', str(tmp_path / 'b'), '-q'], capsys)
    assert rc == 2 and 'no readable frame in' in se and '2 unreadable' in se and len(se.strip().splitlines()) == 3


def _far_apart(t, size=(256, 160)):
    """Frames of unrelated moments: the bands shifted by a third of their period from frame to frame
    and a fresh texture each time, so the flow finds nothing to follow."""
    rng = np.random.default_rng(t)
    img = np.roll(scene(0, size)[0], 16 * t, axis=1).astype(np.int16)
    img += rng.integers(-25, 25, (size[1], size[0], 1)).astype(np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_far_apart_frames_are_measured_and_warned_about():
    """The IAM inconsistent fraction of every propagated frame is kept: low on video, high on frames far
    apart, and far_apart_warning fires on the second only (above FAR_APART_FRACTION, enough frames)."""
    from vidseg_ros.core.pipeline import FAR_APART_FRACTION, FAR_APART_MIN_FRAMES, far_apart_warning
    stats = {}
    for name, frames in (('video', [scene(t, (256, 160))[0] for t in range(12)]),
                         ('far', [_far_apart(t) for t in range(12)])):
        vs = VideoSegmenter(ColourNet(), OperatingPoint('t', scale=1, interval=12))
        for f in frames:
            vs.process(f)
        stats[name] = vs.summary()['inconsistent_fraction']
        assert stats[name]['frames'] == 11 and len(vs.inconsistent_fractions) == 11
    assert stats['video']['median'] < FAR_APART_FRACTION / 2, stats
    assert stats['far']['median'] > FAR_APART_FRACTION + 0.1, stats
    assert far_apart_warning(stats['video']) is None
    w = far_apart_warning(stats['far'], {'type': 'fixed', 'interval': 5})
    assert w.startswith("warning: the labels failed the flow's forward-backward check (IAM) on ")
    assert '--schedule adaptive' in w and '\n' not in w
    w = far_apart_warning(stats['far'], {'type': 'adaptive'})
    assert '--interval 1' in w and '--schedule adaptive' not in w      # already adaptive
    # the boundaries: at the threshold, too few frames, nothing measured
    assert far_apart_warning({'frames': 50, 'median': FAR_APART_FRACTION}) is None
    assert far_apart_warning({'frames': 50, 'median': FAR_APART_FRACTION + 0.01}) is not None
    assert far_apart_warning({'frames': FAR_APART_MIN_FRAMES - 1, 'median': 0.9}) is None
    assert far_apart_warning(None) is None
    # hold mode (no warp) measures nothing: nothing to warn about
    vs = VideoSegmenter(ColourNet(), OperatingPoint('h', scale=1, interval=12, warp=False))
    for t in range(8):
        vs.process(_far_apart(t))
    assert vs.summary()['inconsistent_fraction'] is None


def test_cli_run_warns_when_frames_are_far_apart(tmp_path, capsys, monkeypatch):
    import vidseg_ros.core.models as models
    monkeypatch.setattr(models, 'load_model', lambda *a, **k: ColourNet())
    for name, make in (('video', lambda t: scene(t, (256, 160))[0]), ('far', _far_apart)):
        src = tmp_path / name
        src.mkdir()
        for t in range(10):
            cv2.imwrite(str(src / f'f{t:03d}.png'), cv2.cvtColor(make(t), cv2.COLOR_RGB2BGR))
        out = tmp_path / f'o_{name}'
        rc, so, se = _run_cli(['run', str(src), '--out', str(out), '--interval', '10', '--no-overlay', '-q'], capsys)
        assert rc == 0, se
        summ = json.loads((out / 'summary.json').read_text())
        assert summ['inconsistent_fraction']['frames'] == 9
        assert len(list((out / 'labels').glob('*.png'))) == 10          # a warning, never fewer labels
        if name == 'video':
            assert 'forward-backward check' not in se, se
        else:
            assert len(se.strip().splitlines()) == 1, se
            assert se.startswith("warning: the labels failed the flow's forward-backward check"), se


def test_spacing_bench_scores_spaced_snippets_and_measures_other_sources(tmp_path, capsys):
    """`python -m vidseg_ros.core.spacing_bench`: the snippets every Nth frame, per frame and at S=5, with the
    median IAM fraction that `vidseg run` checks; unlabelled sources get the fraction only."""
    from vidseg_ros.core import spacing_bench
    data = _bench_snippets(tmp_path / 'seqdata', frames=12, size=(256, 160))
    far = tmp_path / 'far'
    far.mkdir()
    for t in range(8):
        cv2.imwrite(str(far / f'f{t:03d}.png'), cv2.cvtColor(_far_apart(t), cv2.COLOR_RGB2BGR))
    extra = [('far apart', far, 8, 1.0), ('missing', tmp_path / 'nope', 5, None),
             ('generated', lambda n: [_far_apart(t) for t in range(n)], 6, None)]
    res = spacing_bench.run_spacing_bench(ColourNet(), data, steps=(1, 2), extra=extra, progress=False)
    rows = res['rows']
    assert [r.get('step') for r in rows] == [1, 2, None, None]    # a source that is not there is left out
    one, two, other, gen = rows
    assert gen['source'] == 'generated' and gen['frames'] == 6 and gen['propagated_frames'] == 4
    assert one['frames'] == 24 and two['frames'] == 12 and one['rate_hz'] == 17.0 and two['rate_hz'] == 8.5
    assert one['propagated_frames'] == 2 * 9 and two['propagated_frames'] == 2 * 4   # 12 / 6 frames, S=5
    assert one['miou_per_frame'] > 0.5 and one['drop'] == pytest.approx(one['miou_per_frame'] - one['miou_s5'])
    assert other['source'] == 'far apart' and other['frames'] == 8 and 'drop' not in other and other['rate_hz'] == 1.0
    assert other['median_inconsistent_fraction'] > 3 * one['median_inconsistent_fraction']
    table = spacing_bench.format_table(res)
    assert '| cityscapes_seq every 2 (8.5 Hz) | 12 |' in table and '| far apart | 8 | - | - | - |' in table
    assert spacing_bench.plot(res, tmp_path / 'p.png').stat().st_size > 10000
    (tmp_path / 'r.json').write_text(json.dumps(res))
    assert spacing_bench.main(['--out', str(tmp_path / 'r.json'), '--replot']) == 0
    assert (tmp_path / 'r.png').is_file() and '| far apart | 8 |' in capsys.readouterr().out
    rc = spacing_bench.main(['--data', str(tmp_path / 'nothing'), '--out', str(tmp_path / 'x.json'), '-q'])
    assert rc == 2 and capsys.readouterr().err.startswith('error: cityscapes_seq not found')


def test_frames_too_small_for_flow_are_held_not_fatal(tmp_path, capsys, monkeypatch):
    """Frames whose flow cannot be computed (10x10: below what DIS needs) still get labels: held from the
    previous frame and flagged degraded, counted with the first error (also two-sided); `vidseg run` says
    so in one warning line and writes every label file."""
    tiny = [scene(t, (10, 10))[0] for t in range(7)]
    vs = VideoSegmenter(ColourNet(), OperatingPoint('t', scale=1, interval=3))
    outs = [vs.process(f) for f in tiny]
    assert [o.is_keyframe for o in outs] == [True, False, False, True, False, False, True]
    assert [o.degraded for o in outs] == [False, True, True, False, True, True, False]
    assert np.array_equal(outs[1].labels, outs[0].labels)          # held
    s = vs.summary()
    assert s['flow_failures'] == 4 and 'too small for DIS flow' in s['flow_error']
    import vidseg_ros.core.models as models
    monkeypatch.setattr(models, 'load_model', lambda *a, **k: ColourNet())
    src = tmp_path / 'tiny'
    src.mkdir()
    for t, f in enumerate(tiny):
        cv2.imwrite(str(src / f'f{t:03d}.png'), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    for extra in ([], ['--two-sided']):
        out = tmp_path / ('o' + ''.join(extra))
        rc, so, se = _run_cli(['run', str(src), '--out', str(out), '--interval', '3', '--scale', '1',
                               '--no-overlay', '-q'] + extra, capsys)
        assert rc == 0, se
        assert len(list((out / 'labels').glob('*.png'))) == 7
        summ = json.loads((out / 'summary.json').read_text())
        assert summ['frames'] == 7 and summ['degraded_frames'] == 4 and summ['flow_failures'] == 4
        assert 'warning: 4 frame(s) without flow (images of' in se and 'held from the previous frame' in se, se
