"""Progress lines for long jobs on a terminal or in a log."""
from __future__ import annotations

import sys


class ProgressPrinter:
    """One line per report: iteration, view kind, losses and ETA; on a terminal the line is
    rewritten in place, in a log every `every` iterations."""

    def __init__(self, every: int = 10, stream=sys.stdout):
        self.every, self.stream = every, stream
        self.tty = stream.isatty()

    def __call__(self, rec: dict) -> None:
        if rec.get("stage") == "A":
            line = f"  stage A {rec['iteration']:4d}/{rec['of']}  loss {rec['loss']:.4f}"
        elif rec.get("stage") == "export":
            line = f"  export: {rec['step']}"
        else:
            it = rec["iteration"]
            if not self.tty and it % self.every and it != 1:
                return
            losses = "  ".join(f"{k} {v:.4f}" for k, v in rec.items()
                               if isinstance(v, float) and k not in ("eta_s", "seconds_per_iteration"))
            eta = rec.get("eta_s", 0.0)
            line = (f"  stage B {it:5d}  {rec['view']:5s}  {losses}  "
                    f"{rec.get('seconds_per_iteration', 0.0):.2f} s/it  ETA {eta // 60:.0f}:{eta % 60:02.0f}")
        if self.tty:
            print("\r" + line[: 160].ljust(160), end="", file=self.stream, flush=True)
        else:
            print(line, file=self.stream, flush=True)

    def close(self):
        if self.tty:
            print(file=self.stream)
