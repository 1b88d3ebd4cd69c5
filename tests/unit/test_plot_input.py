"""triforge-plot reads metrics.jsonl files it did not write: damage is one line, and values
that cannot be drawn (NaN, text) are left out rather than crash the plot."""

from __future__ import annotations

import pytest

from triforge.errors import DataError
from triforge.launcher.plot import main as plot_main
from triforge.trainer.plot import read_metrics


@pytest.mark.parametrize("content, fault", [
    (b"{}\n", r"metrics.jsonl:1 is not a metrics record"),
    (b"NaN\n", r"metrics.jsonl:1 is not a metrics record"),
    (b'{"step": "one", "loss": 1.0}\n', r"metrics.jsonl:1 is not a metrics record"),
    (b'{"step": 1}\n{oops\n', r"metrics.jsonl:2 is not valid JSON"),
    (b'{"step": 1, "loss": 2.0}\n\xff\xfe\n', r"metrics.jsonl is not UTF-8 text"),
])
def test_damaged_metrics_are_named_in_one_line(tmp_path, content, fault, capsys):
    (tmp_path / "metrics.jsonl").write_bytes(content)
    with pytest.raises(DataError, match=fault):
        read_metrics(tmp_path)
    assert plot_main([str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_values_that_cannot_be_drawn_are_left_out(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": NaN}\n'
                                            '{"step": 2, "loss": "high", "val_loss": 3.0}\n'
                                            '{"step": 3, "loss": 2.5}\n')
    records = read_metrics(tmp_path)
    assert [r["loss"] for r in records] == [None, None, 2.5]
    assert plot_main([str(tmp_path), "-o", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
