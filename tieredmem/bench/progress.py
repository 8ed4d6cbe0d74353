"""A progress bar on stderr for long runs (no dependency): a bar redrawn in
place on a terminal, one line per step otherwise (logs, CI)."""
import sys
import time


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    WIDTH = 24

    def __init__(self, total, stream=None, enabled=True):
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.label = ""

    def _line(self):
        elapsed = time.monotonic() - self.start
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * self.WIDTH)
        left = f"~{_clock(elapsed / self.done * (self.total - self.done))} left" if self.done else "estimating"
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return (f"[{bar}] {self.done}/{self.total} {frac:4.0%} {_clock(elapsed)} elapsed, {left}"
                f"  {self.label}")

    def _show(self, force_line=False):
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + self._line()[:200])
        elif force_line:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def step(self, label):
        """A step starts (shown on its own line when not on a terminal)."""
        self.label = label
        self._show(force_line=True)

    def advance(self, n=1):
        self.done += n
        self._show()

    def skip(self, n=1):
        """n planned steps will not run (a system failed at a smaller size)."""
        self.total = max(self.done, self.total - n)
        self._show()

    def note(self, text):
        """A message that must not be overwritten by the bar."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self._show()

    def close(self):
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
