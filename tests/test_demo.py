"""The README's demo runs and writes its plot."""

import pathlib
import runpy


def test_demo_writes_plot(tmp_path, capsys):
    demo = pathlib.Path(__file__).resolve().parents[1] / "examples" / "demo.py"
    out = tmp_path / "demo.png"
    namespace = runpy.run_path(str(demo))
    namespace["main"](str(out))
    assert out.stat().st_size > 10_000
    assert "log-likelihood" in capsys.readouterr().out
