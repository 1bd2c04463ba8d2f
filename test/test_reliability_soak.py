"""Load: a 30 Hz 1242x375 stream through the whole graph (shortened soak; ``vidseg_soak`` runs 2,000 frames).

Every frame the propagation node received is accounted for (labels, or counted as bad/duplicate),
statuses match, frames lost before the node are estimated by the node from stamp gaps, and resident
memory of every node stays flat between the end of the warm-up and the end of the stream.
"""
import pytest

pytest.importorskip('rclpy')

from vidseg_ros.ros.soak import run_soak  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(300)]


def test_soak_short(ros_domain, tmp_path):
    rep = run_soak(frames=300, rate=30.0, size=(1242, 375), model='default', schedule='fixed:5', warmup=100,
                   log_dir=str(tmp_path), progress=False, scale=2)
    print('\nRELIABILITY soak (300):', rep)
    # the graph made progress (how much of the stream it keeps up with depends on the machine's load;
    # what must hold at any load is the accounting below)
    assert rep['frames_in'] >= 50, rep
    assert rep['balance_in_minus_out_minus_counted'] == 0, rep   # nothing silently missing
    assert rep['status_received'] >= rep['frames_in'] - 10, rep
    assert 0 <= rep['subscriber_missed_labels'] <= 10, rep
    # frames lost before the node (transport) are counted by the node itself from gaps in the stamps
    # (losses at the very end of the stream leave no gap)
    assert rep['input_gap_frames_counted'] <= rep['transport_lost'] + 2, rep
    assert rep['respawns'] == 0
    for node, start in rep['rss_mib_start'].items():
        end = rep['rss_mib_end'][node]
        assert start > 20 and end - start < max(40.0, 0.15 * start), (node, start, end)
