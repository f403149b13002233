"""The live anger meter on stderr (rich): probability bar against the threshold, level, state, counts."""

from __future__ import annotations

import sys

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .events import AngerStart, Event, Status, Window

BAR = 40
ENDED = {"end": "ended", "interrupted": "stopped"}
"""Final status states and the meter's label for them."""


class Meter:
    """A rich Live display fed with events; use as a context manager."""

    def __init__(self, threshold: float, source: str, console: Console | None = None) -> None:
        self.threshold = threshold
        self.source = source
        self.console = console or Console(stderr=True)
        self.window: Window | None = None
        self.angry = False
        self.windows = 0
        self.segments = 0
        self.note = ""
        # JSON lines to a terminal stdout are printed above the meter; to a pipe they bypass rich entirely
        self._live = Live(
            self._render(),
            console=self.console,
            auto_refresh=False,
            redirect_stdout=sys.stdout.isatty(),
            redirect_stderr=False,
        )

    def __enter__(self) -> Meter:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.update(self._render(), refresh=True)
        self._live.stop()

    def update(self, events: list[Event]) -> None:
        for e in events:
            if isinstance(e, Window):
                self.window, self.windows = e, self.windows + 1
            elif isinstance(e, AngerStart):
                self.angry, self.segments = True, self.segments + 1
            elif isinstance(e, Status):
                self.note = e.state
            else:
                self.angry = False
        if events:
            self._live.update(self._render(), refresh=True)

    def _bar(self) -> Text:
        p = self.window.p if self.window and self.window.p is not None else None
        mark = min(int(self.threshold * BAR), BAR - 1)
        filled = 0 if p is None else round(p * BAR)
        colour = "red" if p is not None and p >= self.threshold else "green"
        bar = Text()
        for i in range(BAR):
            if i == mark:
                bar.append("|", style="bold yellow")
            else:
                bar.append("█" if i < filled else "·", style=colour if i < filled else "grey50")
        bar.append("  p=" + ("  -  " if p is None else f"{p:.2f}"), style="bold")
        bar.append(f"  threshold {self.threshold:.2f}", style="yellow")
        return bar

    def _render(self) -> Group:
        w = self.window
        state = Text(" ANGRY ", style="bold white on red") if self.angry else Text(" calm ", style="black on green")
        if w is not None and w.silent and not self.angry:
            state = Text(" silent ", style="black on grey70")
        if self.note in ENDED:  # the input is over: no state to show beside the last window's p
            state = Text(f" {ENDED[self.note]} ", style="black on grey70")
        level = "  -  " if w is None else f"{w.dbfs:6.1f} dBFS"
        t = 0.0 if w is None else w.t_end
        info = Text(
            f"  t {t:7.1f} s   level {level}   windows {self.windows}   anger segments {self.segments}",
            style="dim",
        )
        head = Text(f"anger-stream  {self.source}  {self.note}", style="bold")
        return Group(head, Text.assemble(state, "  ", self._bar()), info)
