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
