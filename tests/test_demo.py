"""The README's demo runs, prints the fitted hyperparameters and writes its plot."""

import pathlib
import re
import runpy


def test_demo_writes_plot(tmp_path, capsys):
    demo = pathlib.Path(__file__).resolve().parents[1] / "examples" / "demo.py"
    out = tmp_path / "demo.png"
    namespace = runpy.run_path(str(demo))
    namespace["main"](str(out))
    assert out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "log-likelihood" in printed
    assert "converged: True" in printed
    for name in ("trend variance", "seasonal period", "short-term lengthscale", "noise variance"):
        assert name in printed
    # The fitted cycle is a year long, to within a day.
    period = float(re.search(r"seasonal period .* ([\d.]+) days", printed).group(1))
    assert abs(period - 365.25) < 1.0
