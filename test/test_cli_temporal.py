"""`vidseg run --temporal-mode`: every issue-4 propagation mode is selectable from the CLI."""
import json
import shutil

import pytest

from vidseg_ros import cli


@pytest.mark.parametrize('mode', ['refiner', 'grfp', 'davss', 'cache2', 'region', 'region-ctx'])
def test_run_with_temporal_mode(tmp_path, shared, mode):
    src = tmp_path / 'frames'
    src.mkdir()
    for f in sorted((shared / 'data' / 'cityscapes_seq' / 'seq0001').glob('*.jpg'))[:4]:
        shutil.copy(f, src / f.name)
    out = tmp_path / 'out'
    rc = cli.main(['run', str(src), '--out', str(out), '--model', 'espnetv2_s0.5_512x256', '--interval', '3',
                   '--temporal-mode', mode, '--no-overlay', '-q'])
    assert rc == 0
    assert len(list((out / 'labels').glob('*.png'))) == 4
    s = json.loads((out / 'summary.json').read_text())
    assert s['temporal_mode'] == mode and s['frames'] == 4 and s['keyframes'] == 2
    assert s['propagator']['refined_frames'] == 2          # the module ran on both propagated frames
    if mode == 'region-ctx':   # the keyframe pass handed its context to both tiles
        assert s['region_context'] == {'used': 2, 'missing': 0}


def test_run_two_sided_with_region_refresh(tmp_path, shared):
    """`--two-sided --temporal-mode region`: the region-refreshed forward states are fused with the next
    keyframe carried back; keyframes keep the network's labels, the propagated frames change."""
    import cv2
    src = tmp_path / 'frames'
    src.mkdir()
    for f in sorted((shared / 'data' / 'cityscapes_seq' / 'seq0001').glob('*.jpg'))[:7]:
        shutil.copy(f, src / f.name)
    base = ['run', str(src), '--model', 'espnetv2_s0.5_512x256', '--interval', '3', '--temporal-mode', 'region',
            '--no-overlay', '-q']
    assert cli.main(base + ['--out', str(tmp_path / 'fwd')]) == 0
    assert cli.main(base + ['--out', str(tmp_path / 'two'), '--two-sided']) == 0
    s = json.loads((tmp_path / 'two' / 'summary.json').read_text())
    assert s['frames'] == 7 and s['keyframes'] == 3 and s['temporal_mode'] == 'region'
    assert s['propagator']['refined_frames'] == 4 and s['two_sided']['fused'] == 4
    names = sorted(p.name for p in (tmp_path / 'two' / 'labels').glob('*.png'))
    assert len(names) == 7

    def lab(d, i):
        return cv2.imread(str(tmp_path / d / 'labels' / names[i]), cv2.IMREAD_UNCHANGED)
    for i in (0, 3, 6):
        assert (lab('fwd', i) == lab('two', i)).all()
    assert any((lab('fwd', i) != lab('two', i)).any() for i in (1, 2, 4, 5))


def test_unknown_temporal_mode_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(['run', str(tmp_path), '--out', str(tmp_path / 'o'), '--temporal-mode', 'magic'])
    assert e.value.code == 2


def test_region_tile_area(tmp_path, shared, capsys):
    src = tmp_path / 'frames'
    src.mkdir()
    for f in sorted((shared / 'data' / 'cityscapes_seq' / 'seq0002').glob('*.jpg'))[:3]:
        shutil.copy(f, src / f.name)
    base = ['run', str(src), '--model', 'espnetv2_s0.5_512x256', '--interval', '3', '--no-overlay', '-q']
    assert cli.main(base + ['--out', str(tmp_path / 'a'), '--temporal-mode', 'region',
                            '--region-tile-area', '0.3']) == 0
    assert len(list((tmp_path / 'a' / 'labels').glob('*.png'))) == 3
    rc = cli.main(base + ['--out', str(tmp_path / 'b'), '--region-tile-area', '0.3'])
    assert rc == 2 and '--region-tile-area applies to --temporal-mode region / region-ctx only' in capsys.readouterr().err
    rc = cli.main(base + ['--out', str(tmp_path / 'c'), '--temporal-mode', 'region', '--region-tile-area', '2'])
    assert rc == 2 and 'tile_area must be in (0, 1]' in capsys.readouterr().err
    assert cli.main(base + ['--out', str(tmp_path / 'd'), '--temporal-mode', 'region',
                            '--region-shape', 'tile', '--max-frames', '2']) == 0
    assert len(list((tmp_path / 'd' / 'labels').glob('*.png'))) == 2
    rc = cli.main(base + ['--out', str(tmp_path / 'e'), '--region-shape', 'tile'])
    assert rc == 2 and '--region-shape applies to --temporal-mode region / region-ctx only' in capsys.readouterr().err


def _bench_result(rows):
    return {'config': {'seq': 'seq0003', 'frames': 30, 'size': [512, 256]},
            'intervals': {'2': {}, '5': rows}}


def test_bench_temporal_tradeoff_plot(tmp_path, capsys):
    """The trade-off plot of a saved bench-temporal table (`--replot`), and clear errors around it."""
    from vidseg_ros.core.temporal_bench import plot_tradeoff
    rows = {'warp': {'recovered': None, 'cost_rel': 0.0, 'frame_rel': 0.04},
            'grfp': {'recovered': 0.29, 'cost_rel': 0.235, 'frame_rel': 0.273},
            'iam-lowres': {'recovered': -1.03, 'cost_rel': 0.24, 'frame_rel': 0.28},
            'cache1': {'recovered': 0.52, 'cost_rel': 1.2, 'frame_rel': None},
            'warp+2s': {'recovered': 0.35, 'cost_rel': 0.02, 'frame_rel': 0.06, 'delayed': True}}
    png = plot_tradeoff(_bench_result(rows), tmp_path / 'a.png')
    assert png == tmp_path / 'a.png' and png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert plot_tradeoff(_bench_result({'warp': rows['warp']}), tmp_path / 'b.png') is None   # nothing to plot
    assert not (tmp_path / 'b.png').exists()
    saved = tmp_path / 'cv.json'
    saved.write_text(json.dumps(_bench_result(rows)))
    assert cli.main(['bench-temporal', '--replot', str(saved)]) == 0
    assert (tmp_path / 'cv_tradeoff.png').stat().st_size > 1000
    assert cli.main(['bench-temporal', '--replot', str(tmp_path / 'missing.json')]) == 2
    assert 'cannot read a bench-temporal result' in capsys.readouterr().err
