"""`vidseg run --temporal-mode`: every issue-4 propagation mode is selectable from the CLI."""
import json
import shutil

import pytest

from vidseg_ros import cli


@pytest.mark.parametrize('mode', ['refiner', 'grfp', 'davss', 'cache2', 'region'])
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
    assert rc == 2 and '--region-tile-area applies to --temporal-mode region only' in capsys.readouterr().err
    rc = cli.main(base + ['--out', str(tmp_path / 'c'), '--temporal-mode', 'region', '--region-tile-area', '2'])
    assert rc == 2 and 'tile_area must be in (0, 1]' in capsys.readouterr().err
