"""JupyterLab on the notebooks, in this environment's ``camri`` kernel (``camri lab``; ``make lab`` calls it).

``camri lab [--port 8888] [--ip localhost] [--no-browser]``:

- checks that the port is free, so that the URL it prints is the one the server listens on (the server is
  told not to move to another port);
- makes sure the ``camri`` kernel runs this Python (``camri.notebooks.ensure_kernel``), so every notebook
  finds its kernel, also after a plain ``pip install``;
- passes ``--allow-root`` when running as root, saying so: root is the normal user in containers and on
  many cloud GPU machines, where JupyterLab otherwise refuses to start;
- prints the URL to open, with the access token (``$JUPYTER_TOKEN`` when set, else a fresh random one,
  handed to the server through that variable so that it does not show in the process list), and how to
  reach it from another computer through an ssh tunnel;
- runs JupyterLab in this process until it is stopped (Ctrl-C, or ``POST /api/shutdown``).
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import sys
from collections.abc import Callable
from pathlib import Path

DEFAULT_PORT = 8888
DEFAULT_IP = "localhost"
# Addresses on which the server listens on every interface; the URL then names localhost.
_WILDCARDS = ("", "0.0.0.0", "::", "*")


def is_root() -> bool:
    """Whether this process runs as root (no such notion on Windows: False)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def server_arguments(
    port: int,
    *,
    notebook_dir: str | os.PathLike,
    ip: str = DEFAULT_IP,
    open_browser: bool = True,
    as_root: bool = False,
) -> list[str]:
    """JupyterLab's command-line arguments (``jupyter lab ARGS``)."""
    args = [
        f"--ServerApp.root_dir={Path(notebook_dir).resolve()}",
        f"--ServerApp.ip={ip}",
        f"--ServerApp.port={int(port)}",
        # Fail on a busy port rather than move to the next one: the printed URL must stay true.
        "--ServerApp.port_retries=0",
        f"--ServerApp.open_browser={bool(open_browser)}",
    ]
    if as_root:
        args.append("--allow-root")
    return args


def url(port: int, token: str, ip: str = DEFAULT_IP) -> str:
    """The address to open in a browser on this machine (or at the far end of an ssh tunnel)."""
    host = "localhost" if ip in _WILDCARDS else (f"[{ip}]" if ":" in ip else ip)
    return f"http://{host}:{int(port)}/lab?token={token}"


def check_port(port: int, ip: str = DEFAULT_IP) -> None:
    """ValueError naming the fix when ``port`` is not a valid, free TCP port on ``ip``."""
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be in 1..65535; got {port}")
    try:
        infos = socket.getaddrinfo(
            None if ip in _WILDCARDS else ip, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise ValueError(
            f"cannot listen on {ip!r}: {error.strerror}; use an address of this machine, e.g. "
            "--ip localhost (or IP=0.0.0.0 make lab in a container)"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the server's own socket (tornado sets SO_REUSEADDR): a port in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ValueError(
                    f"port {port} on {ip} is in use (another Jupyter?); choose another: "
                    f"`make lab PORT={int(port) + 1}` or `camri lab --port {int(port) + 1}`"
                ) from None
            raise


def launch(
    port: int = DEFAULT_PORT,
    *,
    ip: str = DEFAULT_IP,
    open_browser: bool = True,
    notebook_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Start JupyterLab on ``notebook_dir`` (default: the checkout's notebooks/) and serve until stopped."""
    from camri.notebooks import NOTEBOOK_DIR, ensure_kernel

    folder = Path(notebook_dir) if notebook_dir is not None else NOTEBOOK_DIR
    if not folder.is_dir():
        raise ValueError(f"notebook folder {folder} does not exist; pass --notebook-dir DIR")
    check_port(port, ip)
    kernel = ensure_kernel()
    token = os.environ.get("JUPYTER_TOKEN") or secrets.token_urlsafe(24)
    os.environ["JUPYTER_TOKEN"] = token  # jupyter_server reads it; not visible in `ps` as an argument
    as_root = is_root()
    if as_root:
        log("running as root (usual in containers): passing --allow-root to JupyterLab")
    log(f"JupyterLab on {folder} with kernel {kernel!r}; open {url(port, token, ip)}")
    log(
        f"from another computer: `ssh -N -L {port}:localhost:{port} USER@THIS-HOST` there, then open that URL "
        "there; stop with Ctrl-C"
    )
    sys.stdout.flush()
    from jupyterlab.labapp import LabApp

    LabApp.launch_instance(
        argv=server_arguments(port, notebook_dir=folder, ip=ip, open_browser=open_browser, as_root=as_root)
    )
    return 0


def _lab_command(args) -> int:
    return launch(args.port, ip=args.ip, open_browser=not args.no_browser, notebook_dir=args.notebook_dir)


def add_cli(subparsers) -> None:
    """Register ``camri lab [--port N] [--ip ADDR] [--no-browser] [--notebook-dir DIR]``."""
    parser = subparsers.add_parser(
        "lab",
        help="JupyterLab on the notebooks with the camri kernel (make lab)",
        description="Start JupyterLab on the numbered notebooks, in this environment's camri kernel; print "
        "the URL to open (with its token). As root it passes --allow-root.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--ip",
        default=DEFAULT_IP,
        help="address to listen on (default localhost; 0.0.0.0 in a container whose port is published)",
    )
    parser.add_argument(
        "--no-browser",
        action="store_true",
        help="do not open a browser (remote machines: open the printed URL through an ssh tunnel)",
    )
    parser.add_argument(
        "--notebook-dir", default=None, metavar="DIR", help="folder to serve (default: the checkout's notebooks/)"
    )
    parser.set_defaults(func=_lab_command)
