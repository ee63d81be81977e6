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
    def __init__(self, store: Path, *extra: str):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--port", "0", "--store", str(store),
                                      "--device", "cpu", *extra], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
        line = self.proc.stdout.readline()
        m = re.search(r"tcp://127\.0\.0\.1:(\d+)", line)
        assert m, f"server did not start: {line!r}"
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
