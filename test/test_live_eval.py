"""live_eval: the live graph's labels scored against the snippets' pseudo labels, beside the offline core.

The scoring (missing frames count as every pixel wrong, the steady subset, predictions at another
resolution) is checked without ROS; one short live run checks, end to end, that with ``keyframe_wait``
(every frame waits for its keyframe result) the graph's scored output is the offline pipeline's, and that
in plain live mode frames whose keyframe result is not in yet are counted at their real distance."""
import json

import numpy as np
import pytest

from vidseg_ros.ros import live_eval
from vidseg_ros.ros.live_eval import Scorer

NAMES = [f'c{i}' for i in range(19)]


def test_scorer_counts_a_missing_frame_as_every_pixel_wrong():
    gt = np.zeros((4, 6), np.uint8)
    gt[:, 3:] = 1
    gt[0, 0] = 255   # ignored
    s = Scorer(NAMES, steady_from=1)
    s.add('a', 0, None, gt)             # nothing arrived: not left out
    s.add('a', 1, gt.copy(), gt)        # perfect
    r = s.summary()
    assert (r['frames'], r['missing']) == (2, 1)
    # classes 0 and 1: half of their pixels predicted (the perfect frame), none falsely
    assert r['iou']['c0'] == pytest.approx(11 / 22) and r['iou']['c1'] == pytest.approx(0.5)
    assert r['miou_steady'] == pytest.approx(1.0)   # index 1 only
    assert r['per_snippet']['a'] == pytest.approx(r['miou'])


def test_scorer_upsamples_predictions_nearest():
    gt = np.zeros((8, 8), np.uint8)
    gt[:, 4:] = 2
    small = gt[::2, ::2].copy()
    s = Scorer(NAMES)
    s.add('a', 0, small, gt)
    assert s.summary()['miou'] == pytest.approx(1.0)


@pytest.mark.parametrize('argv, msg', [
    (['--gap', '0.1'], 'max_gap'),
    (['--temporal-mode', 'nope'], 'unknown --temporal-mode'),
    (['--two-sided', '--temporal-mode', 'grfp'], '--two-sided combines'),
    (['--skip-offline', '--skip-live'], 'nothing to do'),
    (['--frames', '1'], '--frames'),
])
def test_bad_arguments_are_one_line_errors(argv, msg, capsys):
    assert live_eval.main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.startswith('error:') and 'Traceback' not in err


def test_a_model_of_another_class_set_is_refused(shared, capsys):
    assert live_eval.main(['--model', 'espnet_p2q8_camvid', '--skip-live', '--seqs', 'seq0000', '--frames', '2']) == 2
    err = capsys.readouterr().err
    assert 'predicts the camvid classes' in err and 'Traceback' not in err


def test_graph_argv_sets_max_gap_below_the_pause():
    args = live_eval.resolve_args(live_eval.build_parser().parse_args(
        ['--gap', '2', '--temporal-mode', 'region-ctx', '--two-sided', '--param', 'propagation_node:keyframe_wait=1']))
    argv = live_eval.graph_argv(args)
    assert argv[argv.index('--temporal-mode') + 1] == 'region-ctx' and '--two-sided' in argv
    params = [argv[i + 1] for i, a in enumerate(argv) if a == '--param']
    assert 'flow_node:max_gap=1' in params and 'keyframe_node:max_gap=1' in params
    assert params[-1] == 'propagation_node:keyframe_wait=1'


@pytest.mark.ros
@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_live_graph_scored_against_offline(ros_domain, shared, tmp_path, capsys):
    pytest.importorskip('rclpy')
    common = ['--model', 'espnetv2_s0.5_512x256', '--size', '512x256', '--schedule', 'fixed:3',
              '--seqs', 'seq0000', 'seq0002', '--frames', '7', '--steady-from', '3', '--rate', '5',
              '--gap', '1.5', '--warmup', '3', '--domain', str(ros_domain), '--quiet']
    # every frame waits for its keyframe result (no time bound a loaded machine could hit): the offline pipeline
    out = tmp_path / 'wait.json'
    assert live_eval.main(common + ['--param', 'propagation_node:keyframe_wait=30', '--out', str(out)]) == 0
    r = json.loads(out.read_text())
    rows = r['rows']
    assert rows['live']['frames'] == 14 and rows['live']['missing'] == 0
    assert rows['live']['miou'] == pytest.approx(rows['offline']['miou'], abs=0.005)
    assert rows['offline']['keyframes'] == 6   # frames 0, 3, 6 of each snippet (each snippet restarts)
    assert [f['distance'] for f in r['live']['per_frame']] == [0, 1, 2, 0, 1, 2, 0] * 2
    assert rows['per-frame']['miou'] > rows['offline']['miou'] > 0.15
    table = capsys.readouterr().out
    assert 'per-frame' in table and 'offline' in table and 'live' in table

    # live (no waiting), offline skipped: every frame labelled; a frame whose keyframe result is not in yet
    # goes out with the previous one's labels (distance > 0), and the distances say so
    out = tmp_path / 'live.json'
    assert live_eval.main(common + ['--skip-offline', '--out', str(out)]) == 0
    r = json.loads(out.read_text())
    assert 'per-frame' not in r['rows'] and r['rows']['live']['missing'] == 0
    d = [f['distance'] for f in r['live']['per_frame']]
    assert all(x is not None for x in d) and len(d) == 14


def _result(mode, params, live_miou, offline_miou, two_sided=False):
    argv = ['--model', 'default', '--param', 'flow_node:scale=1', '--param', 'flow_node:max_gap=0.75']
    for p in params:
        argv += ['--param', p]
    row = lambda m: {'miou': m, 'miou_steady': m, 'missing': 0}  # noqa: E731
    rows = {'per-frame': row(0.4), 'offline': row(offline_miou), 'live': row(live_miou)}
    live = {'summary': {'latency_median_ms': 30.0, 'latency_p99_ms': 50.0, 'degraded': 3},
            'graph_argv': argv, 'per_frame': [{'distance': d} for d in (0, 1, 6)]}
    if two_sided:
        rows['live two-sided'] = row(live_miou + 0.05)
        rows['offline two-sided'] = row(offline_miou + 0.02)
        live['summary']['two_sided'] = {'latency_median_ms': 400.0, 'latency_p99_ms': 900.0}
    return {'temporal_mode': mode, 'two_sided': two_sided, 'rows': rows, 'live': live}


def test_combine_tables_and_plots_the_live_rows(tmp_path, capsys):
    files = []
    for i, r in enumerate([_result('', [], 0.30, 0.37, two_sided=True),
                           _result('region', ['propagation_node:keyframe_wait=0.3'], 0.38, 0.38)]):
        files.append(tmp_path / f'r{i}.json')
        files[-1].write_text(json.dumps(r))
    png, out = tmp_path / 'p.png', tmp_path / 'c.json'
    assert live_eval.main(['--combine', *map(str, files), '--plot', str(png), '--out', str(out)]) == 0
    c = json.loads(out.read_text())
    assert [r['config'] for r in c['rows']] == ['warp, two-sided', 'warp, two-sided (delayed topic)',
                                                'region, keyframe_wait=0.3']   # the run's own params left out
    assert c['rows'][1]['latency_median_ms'] == 400.0 and c['rows'][1]['offline_miou'] == pytest.approx(0.39)
    assert c['rows'][0]['mean_distance'] == pytest.approx(7 / 3)
    assert png.stat().st_size > 10_000
    assert 'region, keyframe_wait=0.3' in capsys.readouterr().out
    # a result without a live row is a one-line error
    r = _result('', [], 0.3, 0.3)
    del r['rows']['live']
    files[0].write_text(json.dumps(r))
    assert live_eval.main(['--combine', str(files[0])]) == 2
    assert 'no live row' in capsys.readouterr().err
