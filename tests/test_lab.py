"""`camri lab` (what `make lab` runs): JupyterLab's arguments as root and as a normal user, the URL, a busy
port; and a real server on a free port, asked for its kernelspecs through the REST API, then shut down."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from camri import lab

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def test_server_arguments_pass_allow_root_only_as_root(tmp_path):
    args = lab.server_arguments(8890, notebook_dir=tmp_path, open_browser=False, as_root=False)
    assert args == [
        f"--ServerApp.root_dir={tmp_path.resolve()}",
        "--ServerApp.ip=localhost",
        "--ServerApp.port=8890",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
    ]
    as_root = lab.server_arguments(8890, notebook_dir=tmp_path, ip="0.0.0.0", as_root=True)
    assert as_root[-1] == "--allow-root" and "--ServerApp.ip=0.0.0.0" in as_root
    assert "--ServerApp.open_browser=True" in as_root


def test_url_names_a_host_a_browser_can_open():
    assert lab.url(8890, "abc") == "http://localhost:8890/lab?token=abc"
    assert lab.url(8890, "abc", ip="0.0.0.0") == "http://localhost:8890/lab?token=abc"
    assert lab.url(8890, "abc", ip="10.1.2.3") == "http://10.1.2.3:8890/lab?token=abc"
    assert lab.url(8890, "abc", ip="::1") == "http://[::1]:8890/lab?token=abc"


def test_a_busy_port_is_refused_with_the_fix():
    with socket.socket() as busy:
        busy.bind(("localhost", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=rf"port {port} on localhost is in use .*make lab PORT={port + 1}"):
            lab.check_port(port)
    with pytest.raises(ValueError, match="port must be in 1..65535"):
        lab.check_port(70000)


def make_dry_run(*args: str) -> str:
    """The last command `make -n ARGS` would run (pretending pyproject.toml is new, so the venv step is only
    printed). Under `make test` this is a sub-make: its parent's flags are not passed on."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "-W", "pyproject.toml", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_make_lab_passes_port_ip_and_no_browser():
    assert make_dry_run("lab", "PORT=8899", "IP=0.0.0.0", "NO_BROWSER=1") == (
        ".venv/bin/camri lab --port 8899 --ip 0.0.0.0 --no-browser"
    )
    assert make_dry_run("lab") == ".venv/bin/camri lab --port 8888 --ip localhost"


def _get(url: str, token: str, method: str = "GET"):
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


@pytest.mark.slow
def test_camri_lab_serves_the_camri_kernel_and_stops_cleanly(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
    }  # no user configuration, no stray server files
    env.pop("JUPYTER_TOKEN", None)
    stderr = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "camri", "lab", "--port", str(port), "--no-browser"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    try:
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        specs = None
        while time.monotonic() < deadline and server.poll() is None:
            found = [m for line in list(lines) if (m := re.search(r"open (http://\S+/lab\?token=(\S+))", line))]
            if found:
                try:
                    status, body = _get(f"http://localhost:{port}/api/kernelspecs", found[0].group(2))
                    specs = json.loads(body)
                    break
                except OSError:  # not listening yet
                    pass
            time.sleep(0.5)
        assert specs is not None, f"no answer from the server: {lines}\n{(tmp_path / 'server.log').read_text()}"
        assert found[0].group(1) == f"http://localhost:{port}/lab?token={found[0].group(2)}"
        assert ("passing --allow-root" in lines[0]) == lab.is_root()
        assert "camri" in specs["kernelspecs"]
        argv0 = specs["kernelspecs"]["camri"]["spec"]["argv"][0]
        assert argv0 in ("python", "python3") or Path(argv0).resolve() == Path(sys.executable).resolve()
        status, _ = _get(f"http://localhost:{port}/api/shutdown", found[0].group(2), method="POST")
        assert status == 200
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        stderr.close()
