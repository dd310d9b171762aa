"""End to end: the real `gptui` on a tiny checkpoint inside tmux, driven by keys, read by capture-pane."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install -y tmux)"),
    pytest.mark.skipif(shutil.which("gptui") is None, reason="the gptui command is not installed (pip install -e .)"),
]


class Tmux:
    """One tmux server on its own socket, so the test never touches a user's sessions."""

    def __init__(self, name: str):
        self.socket = f"gptui-e2e-{os.getpid()}-{name}"

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True,
                              text=True, timeout=30).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "app")

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.run("send-keys", "-t", "app", *(["-l"] if literal else []), *keys)

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared; the screen was:\n{screen}")
            time.sleep(0.2)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def test_gptui_in_a_terminal_completes_saves_and_quits(tiny_model_dir, tmp_path):
    source = tmp_path / "demo.py"
    source.write_text("import os\n\n\n")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "config.toml").write_text("[sampling]\ntemperature = 0.0\nseed = 0\nmax_tokens = 24\n"
                                            "[editor]\ndebounce_ms = 100\n")
    env = {
        "GPTUI_CONFIG_DIR": str(config_dir),
        "GPTUI_DATA_DIR": str(tmp_path / "data"),
        "GPTUI_CACHE_DIR": str(tmp_path / "cache"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "HOME": str(tmp_path),
        "TERM": "xterm-256color",
        "PATH": os.environ["PATH"],
    }
    # Unset COLUMNS/LINES: when they reach the pane they override its real size.
    command = " ".join([
        "env", "-u", "COLUMNS", "-u", "LINES", *(f"{k}={shlex.quote(v)}" for k, v in env.items()),
        "gptui", shlex.quote(str(source)), "--model", shlex.quote(str(tiny_model_dir)),
        "; echo EXITED $?; sleep 60",
    ])
    tmux = Tmux("app")
    try:
        tmux.run("new-session", "-d", "-s", "app", "-x", "120", "-y", "36", command)
        tmux.wait_for("torch-fp32 · FIM")  # the status line once the model is loaded (FIM or "FIM: no")
        screen = tmux.wait_for("demo.py")
        assert "import os" in screen

        tmux.keys("Down", "Down", "Down")  # to the empty last line
        time.sleep(0.5)  # Textual can take text typed right after escape sequences before them
        tmux.keys("def add(a, b):", literal=True)
        screen = tmux.wait_for("stopped:")  # a completion ran and the status says why it ended
        assert "def add(a, b):" in screen and "TTFT" in screen and "tok/s" in screen

        tmux.keys("Tab")  # accept it
        tmux.keys("C-s")
        tmux.wait_for("Saved")
        saved = source.read_text()
        assert saved.startswith("import os\n\n\ndef add(a, b):")
        assert len(saved) > len("import os\n\n\ndef add(a, b):")  # the completion went in

        tmux.keys("C-q")
        tmux.wait_for("EXITED 0", timeout=30)
    finally:
        tmux.kill()
