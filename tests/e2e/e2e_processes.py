"""Real processes for the end-to-end tests: the `marketplace` command in the background (its own
session, so the whole group can be stopped), its output collected line by line, and one-shot runs."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

MARKETPLACE = str(Path(sys.executable).with_name("marketplace"))
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def isolated_env(data_dir: Path, config_dir: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any MARKETPLACE_* setting, plus isolated data and config dirs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
    env |= {"MARKETPLACE_DATA_DIR": str(data_dir), "MARKETPLACE_CONFIG_DIR": str(config_dir),
            "COLUMNS": "250", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    return env | extra


def find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in:\n{text}"
    return match.group(1)


def children_of(pid: int) -> dict[int, str]:
    """pid -> command name of the live direct children of `pid` (read from /proc)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if int(rest[1]) == pid and rest[0] != "Z":
            found[int(entry.name)] = name
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Background:
    """A command in its own session; stdout+stderr kept; `stop()` kills whatever is left of it."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> None:
        self.args = list(args)
        self.process = subprocess.Popen(self.args, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.pgid = self.process.pid  # a new session: its own process group
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def wait_for(self, text: str, timeout: float) -> str:
        """Wait until `text` appears in the output; fail (with the output) if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return self.output
            if self.process.poll() is not None:
                self._reader.join(5)
                if text in self.output:
                    return self.output
                raise AssertionError(f"{self.args} exited ({self.process.returncode}) before {text!r}:\n{self.output}")
            time.sleep(0.1)
        raise AssertionError(f"{self.args}: no {text!r} within {timeout} s:\n{self.output}")

    def interrupt(self, timeout: float) -> int:
        """SIGINT to the process alone (as Ctrl-C to the main process), then its exit status."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """Kill the whole group if anything of it is left (always safe to call)."""
        if group_alive(self.pgid):
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        if self.process.stdout is not None:
            self.process.stdout.close()


def run(args: Sequence[str], env: Mapping[str, str], timeout: float = 60, ok: bool = True
        ) -> subprocess.CompletedProcess[str]:
    """Run `marketplace ARGS...` to completion (stdout and stderr apart)."""
    result = subprocess.run([MARKETPLACE, *args], env=dict(env), capture_output=True, text=True, check=False,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if ok and result.returncode != 0:
        raise AssertionError(f"marketplace {' '.join(args)} failed ({result.returncode}):\n"
                             f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result
