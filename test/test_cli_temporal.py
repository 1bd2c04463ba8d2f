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


def test_bench_temporal_same_compute():
    """Each module against spending its compute on keyframes: plain warping's mIoU at the row's mean cost per
    frame (keyframes included), interpolated between the intervals run (S=1: per-frame at cost 1)."""
    from vidseg_ros.core.temporal_bench import format_same_compute, mean_cost_rel, same_compute
    assert mean_cost_rel({'keyframe_fraction': 0.2, 'frame_rel': 0.3, 'cost_rel': 0.25}) == pytest.approx(0.44)
    assert mean_cost_rel({'keyframe_fraction': 0.5, 'frame_rel': None, 'cost_rel': 0.8}) == pytest.approx(0.9)
    assert mean_cost_rel({'frame_rel': 0.3}) is None
    res = {'per_frame': {'miou': 0.40},
           'intervals': {'2': {'warp': {'miou': 0.38, 'mean_rel': 0.52}, 'mod': {'miou': 0.39, 'mean_rel': 0.65}},
                         '3': {'warp': {'miou': 0.36, 'mean_rel': 0.36}, 'mod': {'miou': 0.37, 'mean_rel': 0.53}},
                         '5': {'warp': {'miou': 0.30, 'mean_rel': 0.23}, 'mod': {'miou': 0.35, 'mean_rel': 0.44},
                               'cheap': {'miou': 0.31, 'mean_rel': 0.21},
                               'mod+2s': {'miou': 0.37, 'mean_rel': 0.46, 'delayed': True}}}}
    sc = {(e['interval'], e['mode']): e for e in same_compute(res)}
    assert set(sc) == {('2', 'mod'), ('3', 'mod'), ('5', 'mod'), ('5', 'cheap'), ('5', 'mod+2s')}
    e = sc[('5', 'mod')]                        # between S=3 (0.36, 36 %) and S=2 (0.52, 38 %): 37 %
    assert e['warp_between'] == ['3', '2'] and e['warp_miou'] == pytest.approx(0.37)
    assert e['gain'] == pytest.approx(-0.02) and e['delayed'] is False
    e = sc[('2', 'mod')]                        # between S=2 and per-frame (1.0, 40 %)
    assert e['warp_between'] == ['2', '1'] and e['warp_miou'] == pytest.approx(0.38 + 0.02 * 0.13 / 0.48)
    assert sc[('5', 'mod+2s')]['delayed'] is True
    assert 'gain_pixel' not in sc[('5', 'mod')]                # no pixel accuracy in these rows
    # the same on pixel accuracy where the rows have it (a video: agreement with the per-frame network)
    res['per_frame']['pixel_acc'] = 1.0
    res['intervals']['3']['warp']['pixel_acc'] = 0.96
    res['intervals']['2']['warp']['pixel_acc'] = 0.98
    res['intervals']['5']['mod']['pixel_acc'] = 0.975
    e = {(e['interval'], e['mode']): e for e in same_compute(res)}[('5', 'mod')]
    assert e['warp_pixel_acc'] == pytest.approx(0.97) and e['gain_pixel'] == pytest.approx(0.005)
    assert sc[('5', 'cheap')]['warp_miou'] is None and sc[('5', 'cheap')]['gain'] is None   # below every interval
    lines = format_same_compute(dict(res, same_compute=same_compute(res)))
    row = [ln.split() for ln in lines if ln.startswith('S=5 mod ')][0]
    assert row[2:] == ['0.440', '35.0', '37.0', 'S=3-2', '-2.0', '97.5', '97.0', '+0.5'], row
    assert format_same_compute({'intervals': {}}) == []


def test_bench_temporal_same_compute_plot_and_old_results(tmp_path):
    """The same-compute plot (`<stem>_compute.png`) next to the trade-off plot, also from a result saved
    before the mean cost existed (`--replot` works it out from the config: snippets, frames, phase)."""
    from vidseg_ros.core.temporal_bench import _kf_fraction
    assert _kf_fraction({'config': {'seqs': ['a', 'b'], 'frames': 60}}, 5) == pytest.approx(6 / 30)
    assert _kf_fraction({'config': {'seqs': ['a'], 'frames': 7, 'phase': 2}}, 3) == pytest.approx(3 / 7)
    rows5 = {'warp': {'miou': 0.347, 'recovered': None, 'cost_rel': 0.0, 'frame_rel': 0.04},
             'region': {'miou': 0.357, 'recovered': 0.36, 'cost_rel': 0.26, 'frame_rel': 0.30}}
    rows3 = {'warp': {'miou': 0.361, 'recovered': None, 'cost_rel': 0.0, 'frame_rel': 0.04},
             'region': {'miou': 0.366, 'recovered': 0.39, 'cost_rel': 0.26, 'frame_rel': 0.30}}
    old = {'config': {'seq': 'seq0000 seq0001', 'seqs': ['seq0000', 'seq0001'], 'frames': 60, 'size': [512, 256]},
           'per_frame': {'miou': 0.374}, 'intervals': {'3': rows3, '5': rows5}}
    saved = tmp_path / 'old.json'
    saved.write_text(json.dumps(old))
    assert cli.main(['bench-temporal', '--replot', str(saved)]) == 0
    for kind in ('tradeoff', 'compute'):
        assert (tmp_path / f'old_{kind}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    saved.write_text('[1, 2]')
    assert cli.main(['bench-temporal', '--replot', str(saved)]) == 2
