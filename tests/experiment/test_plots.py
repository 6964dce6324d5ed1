"""Error bars in the report's bar plots: spread only where there is one."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dmesr.report.plots import _bars, _stat


def test_one_seed_gets_no_error_bar() -> None:
    df = pd.DataFrame({"variant": ["a", "a", "a", "b"], "m": [0.1, 0.2, 0.3, 0.5]})
    assert np.allclose(_stat(df[df.variant == "a"], "m"), (0.2, 0.1))
    mean, std = _stat(df[df.variant == "b"], "m")
    assert mean == 0.5 and np.isnan(std)  # one seed: no spread to draw
    fig, ax = plt.subplots()
    _bars(ax, ["a", "b"], ["sasrec"], lambda v, _hue: _stat(df[df.variant == v], "m"))
    (bars,) = ax.containers[:1]
    assert [round(p.get_height(), 6) for p in bars] == [0.2, 0.5]
    errorbar = ax.containers[1]
    segments = errorbar.lines[2][0].get_segments()
    assert len(segments) == 1  # variant a only
    assert np.allclose(segments[0][:, 1], [0.1, 0.3])
    plt.close(fig)
