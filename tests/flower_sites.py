"""Run a real Flower 1.42 deployment (SuperLink, SuperNodes, the `flwr` CLI) on 127.0.0.1 for tests.

Not a test file: tests import it (`from flower_sites import Deployment, make_tls, make_node_key`).
Every file a deployment writes (process logs, FLWR_HOME, the SuperLink's state.db) stays under the
folder it is given, so a failing test leaves its evidence in pytest's tmp_path.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

BIN = Path(sys.executable).parent  # the venv's bin: flower-superlink, flower-supernode, flwr
CONNECTION = "fedreg-test"  # the connection name written into $FLWR_HOME/config.toml
# Lines a SuperNode logs before it exits when its key is not registered (--enable-supernode-auth).
REFUSED = re.compile(r"Exit Code: 305|\[code: 2004\]|Failed to activate SuperNode")
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Flower colours its log levels
T = TypeVar("T")
Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a test CA and of a server certificate for 127.0.0.1/localhost signed by it."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _write_private(path: Path, key: Key, fmt: serialization.PrivateFormat) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    path.chmod(0o600)


def _cert(subject: str, key: Key, ca_key: Key, *exts: x509.ExtensionType) -> bytes:
    """A PEM certificate for `key` with the common name `subject`, signed by `ca_key` (the test CA)."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedreg test CA")])
    builder = x509.CertificateBuilder(
        ca_name, name, key.public_key(), x509.random_serial_number(), now, now + datetime.timedelta(days=30)
    )
    for ext in exts:  # BasicConstraints and KeyUsage are critical, the others are not
        builder = builder.add_extension(ext, isinstance(ext, x509.BasicConstraints | x509.KeyUsage))
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_tls(folder: Path) -> TLSFiles:
    """Create a self-signed CA (ca.pem) and a server certificate (server.pem, server.key) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # certSign, cRLSign
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    files = TLSFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    ca = [x509.BasicConstraints(True, 0), usage, ski]
    files.ca_cert.write_bytes(_cert("fedreg test CA", ca_key, ca_key, *ca))
    server = [x509.SubjectAlternativeName(san), x509.BasicConstraints(False, None)]
    server += [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])]
    server += [x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)]
    files.server_cert.write_bytes(_cert("127.0.0.1", key, ca_key, *server))
    _write_private(files.server_key, key, serialization.PrivateFormat.TraditionalOpenSSL)
    return files


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """Create an OpenSSH ECDSA P-384 key pair `folder/name` (+ `.pub`), as SuperNode authentication needs."""
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / name, folder / f"{name}.pub"
    if shutil.which("ssh-keygen"):
        cmd = ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", name, "-f", str(private)]
        subprocess.run(cmd, check=True, capture_output=True)
        return private, public
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(private, key, serialization.PrivateFormat.OpenSSH)
    ssh = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public.write_bytes(ssh + b"\n")
    return private, public


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    text = ANSI.sub("", path.read_text(errors="replace")) if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _default_signals() -> None:
    # A shell starts background jobs with SIGINT ignored, and ignored signals survive exec.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _groups(pid: int) -> set[int]:
    """The process groups of `pid` and its descendants, from /proc (the SuperLink's SuperExec has its own)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            _, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            children.setdefault(int(ppid), []).append((int(stat.parent.name), int(pgrp)))
    groups, todo = {pid}, [pid]
    while todo:
        for child, group in children.get(todo.pop(), []):
            groups.add(group)
            todo.append(child)
    return groups


def _stop(proc: subprocess.Popen[bytes], grace: float, sig: signal.Signals = signal.SIGTERM) -> None:
    """Send `sig` to the process's group, SIGKILL every group of its tree after `grace` s, reap the process.

    Only one signal goes to each process before the SIGKILL: Flower's handlers restore the default
    disposition, so a second SIGTERM would kill a SuperNode before it deactivates itself.
    """
    groups = _groups(proc.pid) if proc.poll() is None else {proc.pid}
    if sig != signal.SIGKILL:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
        groups |= _groups(proc.pid) if proc.poll() is None else set()
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    proc.wait()


@dataclass
class NodeHandle:
    """A started SuperNode: its process, log file and local runtime port."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int

    def log_text(self) -> str:
        """The whole log of this SuperNode so far."""
        return ANSI.sub("", self.log.read_text(errors="replace")) if self.log.exists() else ""


class Deployment:
    """A SuperLink, SuperNodes and `flwr` CLI calls on 127.0.0.1; a context manager that stops them all."""

    def __init__(
        self, folder: Path, tls: TLSFiles | None = None, auth: bool = False, env: dict[str, str] | None = None
    ) -> None:
        if auth and tls is None:
            raise ValueError("SuperNode authentication needs TLS (Flower refuses it with --insecure)")
        self.folder, self.tls, self.auth = Path(folder), tls, auth
        self.home, self.logs = self.folder / "flwr-home", self.folder / "logs"
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.superlink_log = self.logs / "superlink.log"
        self.env = {**os.environ, "FLWR_HOME": str(self.home)}
        self.env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}"
        self.env.update(FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PYTHONUNBUFFERED="1")
        self.env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", **(env or {}))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.nodes_started: list[NodeHandle] = []

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self, grace: float = 5.0) -> None:
        """Stop every process this deployment started and their children (nodes first), and reap them."""
        for proc in reversed(self.procs):
            _stop(proc, grace)

    def _spawn(self, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            io: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": out, "stderr": subprocess.STDOUT}
            kw: dict[str, Any] = {"start_new_session": True, "preexec_fn": _default_signals}
            self.procs.append(proc := subprocess.Popen(cmd, cwd=self.folder, env=self.env, **io, **kw))
        return proc

    def evidence(self) -> str:
        """The tails of the SuperLink's log and of every SuperNode's log."""
        nodes = "".join(f"\n--- {h.name} log:\n{tail(h.log, 15)}" for h in self.nodes_started)
        return f"--- superlink log:\n{tail(self.superlink_log)}{nodes}"

    def _poll(self, check: Callable[[], T | None], timeout: float, what: str, every: float = 1.0) -> T:
        """Call `check` until it returns non-None; raise TimeoutError (with log tails) after `timeout`."""
        deadline = time.monotonic() + timeout
        while (found := check()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} after {timeout}s\n{self.evidence()}")
            time.sleep(every)
        return found

    def start_superlink(self, timeout: float = 60.0) -> None:
        """Start flower-superlink, wait until its port answers, and write the `fedreg-test` connection."""
        cmd = [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--database", str(self.folder / "state.db"), "--disable-runtime-dependency-installation"]
        if self.tls is None:
            cmd += ["--insecure"]
        else:
            cmd += ["--ssl-certfile", str(self.tls.server_cert), "--ssl-keyfile", str(self.tls.server_key)]
            cmd += ["--ssl-ca-certfile", str(self.tls.ca_cert)]
            cmd += ["--enable-supernode-auth"] if self.auth else []
        proc = self._spawn(cmd, self.superlink_log)

        def up() -> bool | None:
            if proc.poll() is not None:
                raise RuntimeError(f"flower-superlink exited {proc.returncode}:\n{tail(self.superlink_log)}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0 or None

        self._poll(up, timeout, "flower-superlink is not listening", every=0.3)
        trust = f"root-certificates = {json.dumps(str(self.tls.ca_cert))}" if self.tls else "insecure = true"
        conf = f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        (self.home / "config.toml").write_text(f'{conf}address = "127.0.0.1:{self.port}"\n{trust}\n')

    def flwr(self, *args: str, timeout: float = 120.0, check: bool = True) -> CompletedProcess[str]:
        """Run `flwr ARGS` in this deployment's environment (logged to logs/cli.log); raise on failure."""
        cmd = [str(BIN / "flwr"), *args]
        try:
            res = subprocess.run(
                cmd, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"{' '.join(cmd)} took over {timeout}s\n{self.evidence()}") from exc
        with (self.logs / "cli.log").open("a") as log:
            log.write(f"$ {' '.join(cmd)}  -> {res.returncode}\n{res.stdout}{res.stderr}\n")
        if check and (res.returncode != 0 or '"success": false' in res.stdout):
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def flwr_json(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run `flwr ARGS --format json` and return its JSON object."""
        res = self.flwr(*args, "--format", "json", timeout=timeout)
        try:
            return dict(json.loads(res.stdout))
        except ValueError as exc:
            raise RuntimeError(f"no JSON from flwr {' '.join(args)}:\n{res.stdout}{res.stderr}") from exc

    def register_node(self, public_key: Path, name: str | None = None) -> int:
        """Register a SuperNode's public key (auth only); return its node id."""
        extra = ["--name", name] if name else []
        return int(self.flwr_json("supernode", "register", str(public_key), CONNECTION, *extra)["node-id"])

    def start_node(
        self, node_config: str, private_key: Path | None = None, name: str | None = None
    ) -> NodeHandle:
        """Start a flower-supernode with `--node-config node_config` and its own runtime port."""
        name = name or f"node{len(self.nodes_started)}"
        port, log = free_port(), self.logs / f"{name}.log"
        trust = ["--root-certificates", str(self.tls.ca_cert)] if self.tls else ["--insecure"]
        cmd = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}", *trust]
        cmd += ["--node-config", node_config, "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--auth-supernode-private-key", str(private_key)] if private_key else []
        self.nodes_started.append(handle := NodeHandle(name, self._spawn(cmd, log), log, port))
        return handle

    def nodes(self) -> list[dict[str, Any]]:
        """`flwr supernode list` nodes: node-id (a str), status (registered|online|offline|unregistered)."""
        return list(self.flwr_json("supernode", "list", CONNECTION)["nodes"])

    def wait_nodes(self, n: int, timeout: float = 90.0) -> list[dict[str, Any]]:
        """Wait until at least `n` SuperNodes are online; return the online ones."""

        def online() -> list[dict[str, Any]] | None:
            nodes = [x for x in self.nodes() if x["status"] == "online"]
            return nodes if len(nodes) >= n else None

        return self._poll(online, timeout, f"fewer than {n} nodes online")

    def submit(self, app_dir: Path, run_config: dict[str, Any] | None = None) -> int:
        """`flwr run APP_DIR fedreg-test` (the run config goes in a TOML file); return the run id."""
        args = ["run", str(app_dir), CONNECTION]
        if run_config:
            path = self.folder / f"run-config-{time.monotonic_ns()}.toml"
            values = {k: v if isinstance(v, bool | int | float) else str(v) for k, v in run_config.items()}
            path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))  # TOML literals
            args += ["--run-config", str(path)]
        return int(self.flwr_json(*args, timeout=300)["run-id"])

    def run_status(self, run_id: int) -> dict[str, Any]:
        """The run's entry in `flwr ls --run-id RUN_ID` (status, status-details, ...)."""
        return dict(self.flwr_json("ls", "--run-id", str(run_id), CONNECTION)["runs"][0])

    def wait_run(self, run_id: int, timeout: float = 300.0) -> dict[str, Any]:
        """Wait until the run's status starts with `finished:`; return its `flwr ls` entry."""

        def finished() -> dict[str, Any] | None:
            run = self.run_status(run_id)
            return run if run["status"].startswith("finished:") else None

        try:
            return self._poll(finished, timeout, f"run {run_id} not finished", every=2.0)
        except TimeoutError as exc:
            log = self.flwr("log", str(run_id), CONNECTION, "--show", check=False).stdout
            raise TimeoutError(f"{exc}\n--- flwr log {run_id}:\n{log}") from None

    def run_log(self, run_id: int) -> str:
        """The ServerApp's log of a run (`flwr log RUN_ID --show`)."""
        return self.flwr("log", str(run_id), CONNECTION, "--show").stdout

    def wait_refused(self, handle: NodeHandle, timeout: float = 60.0) -> str:
        """Wait until a SuperNode with an unregistered key exits refused; return the log lines that show it.

        The node logs `Exit Code: 305` ... `[code: 2004] Failed to activate SuperNode.` and exits with
        status 1; the SuperLink logs `[/v1/fleet/activate-node][ApiError:2004] ... No SuperNode found with
        the given public key` (HTTP 412). Reaping the node lets its flower-superexec (--parent-pid) exit.
        """
        code = self._poll(handle.proc.poll, timeout, f"{handle.name} still running (not refused)", 0.5)
        lines = [x for x in handle.log_text().splitlines() if REFUSED.search(x)]
        if not any("2004" in x for x in lines):
            raise RuntimeError(f"{handle.name} exited ({code}) but was not refused:\n{tail(handle.log)}")
        link = [x for x in tail(self.superlink_log, 10**6).splitlines() if "ApiError:2004" in x]
        link = [f"{x.split(' Attempted')[0]} ...{x.rsplit('exception:', 1)[-1]}" for x in link]
        return "\n".join([f"{handle.name} exit status {code}", *lines, *link])

    def kill_node(self, handle: NodeHandle) -> None:
        """SIGKILL a SuperNode's process group and children (a crash: the SuperLink is not told)."""
        _stop(handle.proc, 0.0, signal.SIGKILL)

    def stop_node(self, handle: NodeHandle, timeout: float = 15.0) -> int:
        """SIGTERM a SuperNode (it deactivates itself), SIGKILL leftovers after `timeout`; return its code."""
        _stop(handle.proc, timeout)
        return int(handle.proc.returncode)
