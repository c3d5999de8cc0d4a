"""Loss curves drawn with plotext (textual-plotext): one or more (step, loss) series."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from smolmac.tui.i18n import t

COLORS = ("cyan", "orange", "green", "magenta", "red", "blue")


class LossChart(PlotextPlot):
    """A line chart of named series; call `set_series` with new points to redraw."""

    DEFAULT_CSS = """
    LossChart { height: 1fr; min-height: 8; }
    """

    def __init__(self, title: str = "", **kwargs):
        super().__init__(**kwargs)
        self.title = title
        self.series: dict[str, list[tuple[int, float]]] = {}

    def on_mount(self) -> None:
        super().on_mount()
        self._draw()

    def set_series(self, series: dict[str, list[tuple[int, float]]]) -> None:
        """Replace the plotted series, e.g. {"train": [(1, 2.3), ...], "valid": [...]}."""
        self.series = {name: list(points) for name, points in series.items()}
        self._draw()

    def point_count(self) -> int:
        return sum(len(p) for p in self.series.values())

    def _draw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title)
        plt.xlabel(t("step"))
        drawn = False
        for color, (name, points) in zip(COLORS, self.series.items()):
            if not points:
                continue
            xs, ys = zip(*points)
            # A single point is drawn as a marker; lines need two.
            if len(points) == 1:
                plt.scatter(list(xs), list(ys), label=name, color=color, marker="dot")
            else:
                plt.plot(list(xs), list(ys), label=name, color=color, marker="braille")
            drawn = True
        if not drawn:
            plt.title(f"{self.title} — {t('waiting for the first step')}" if self.title else t("waiting for the first step"))
        self.refresh()
