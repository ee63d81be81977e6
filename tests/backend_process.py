"""A real backend server process on 127.0.0.1 with a random port, for tests."""
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """`python -m backend serve` (or `command`, e.g. "farm"); lines it prints before the address
    are kept in `said` (a farm lists its workers there)."""

    def __init__(self, store: Path, *extra: str, command: str = "serve", stderr=subprocess.DEVNULL):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "backend", command, "--port", "0", "--store", str(store),
                                      "--device", "cpu", *extra], stdout=subprocess.PIPE,
                                     stderr=stderr, text=True, env=env, cwd=ROOT)
        self.said = []
        while True:
            line = self.proc.stdout.readline()
            m = re.search(r"serving on tcp://127\.0\.0\.1:(\d+)", line)
            if m or not line:
                break
            self.said.append(line.strip())
        assert m, f"server did not start: {self.said[-5:]} {line!r}"
        self.address = f"tcp://127.0.0.1:{m.group(1)}"

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


def store_with(tmp_path: Path, fitted: Path, *ids: str) -> Path:
    """A new store holding copies of the fitted avatar folder under the given ids."""
    store = tmp_path / "store"
    for avatar_id in ids:
        shutil.copytree(fitted, store / avatar_id)
    return store


def view(subject, scale=0.5) -> dict:
    return {"pose": subject["pose"], "transl": subject["transl"], "camera": subject["camera"].scaled(scale)}


def check_fit_progress(seen: list, iterations: int) -> None:
    """A fit's progress as a client saw it: stage A then B, B's iterations in order up to the end."""
    stages = [m.fields["stage"] for m in seen]
    assert "A" in stages and "B" in stages
    b_iters = [m.fields["iteration"] for m in seen
               if m.fields["stage"] == "B" and "preview" not in m.frames and m.fields["body"] is None]
    assert b_iters == sorted(b_iters) and b_iters[-1] == iterations and seen[-1].fields["total"] == iterations
