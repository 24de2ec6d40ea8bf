"""`python -m benchmarks.static_shapes`: what data.static_shapes costs on a data dir."""

from __future__ import annotations

from benchmarks import static_shapes
from speechssl.testing.datadirs import make_data_dir


def test_the_table_counts_padding_and_shapes_per_setting(tmp_path, capsys):
    data = make_data_dir(tmp_path, num_speakers=4, utts_per_speaker=6, base_seconds=0.5)
    args = [
        str(data.path),
        "--max-batch-seconds",
        "3",
        "--max-seconds",
        "1",
        "--epochs",
        "3",
        "--shapes",
        "0",
        "2",
    ]
    assert static_shapes.main(args) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    off, two = ([cell.strip() for cell in row] for row in rows[1:])
    assert off[0] == "off" and two[0] == "2"
    assert float(two[1]) < float(off[1]) <= 1.0  # static shapes cost padding
    assert int(two[4]) <= 2 < int(off[4])  # and bound the shapes
    assert float(off[3]) == 0.0
