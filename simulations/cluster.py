"""Start both nodes as separate OS processes on loopback, with mutual TLS, for demos, tests and benchmarks.

    with LocalCluster(workdir, bank_data=..., bank_id_column="id", bank_tag_columns=[...],
                      platform_data=..., platform_id_column="id") as cluster:
        client = cluster.bank_client()
        client.align()

It writes what two organisations would each write: certificates (`fedprofile-certs init`: certs/bank and
certs/platform, each with its CA, node certificate and CRL, and an operator certificate for the person
named by ``OPERATOR``), one TOML per node, and runs `bank-node serve` and `platform-node serve` exactly as
an operator would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from party_bank.client import BankClient
from party_common.certs import init_local_pki
from party_common.storage.alignments import Alignment, FileAlignmentStore
from party_common.storage.files import atomic_write
from protocols.errors import FedProfileError

OPERATOR = "data-scientist"  # the person whose operator certificate the harness's client uses


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def write_configs(workdir: Path, *, bank_data: Path, bank_id_column: str, bank_tag_columns: Sequence[str],
                  platform_data: Path, platform_id_column: str, bank_port: int, platform_port: int,
                  workers: int = 2, fill_missing: str = "error", in_memory_mb: float = 1024) -> tuple[Path, Path]:
    certs = workdir / "certs"
    bank = f"""# The bank's node: one short file.
[node]
name = "bank"
role = "bank"
listen = "127.0.0.1:{bank_port}"
state_dir = "state/bank"
workers = {workers}

[peer]
address = "127.0.0.1:{platform_port}"
tls_name = "platform"

[tls]
cert = "{certs / 'bank' / 'node.crt'}"
key = "{certs / 'bank' / 'node.key'}"
peer_ca = "{certs / 'platform' / 'ca.crt'}"
peer_crl = "{certs / 'platform' / 'crl.pem'}"
client_ca = "{certs / 'bank' / 'ca.crt'}"
client_crl = "{certs / 'bank' / 'crl.pem'}"

[data]
path = "{bank_data.resolve()}"
id_column = "{bank_id_column}"
tag_columns = {_toml_list(bank_tag_columns)}
fill_missing = "{fill_missing}"
in_memory_mb = {in_memory_mb:g}
"""
    platform = f"""# The platform's node: one short file.
[node]
name = "platform"
role = "platform"
listen = "127.0.0.1:{platform_port}"
state_dir = "state/platform"
workers = {workers}

[peer]
tls_name = "bank"                # the bank node's certificate: the only caller this node serves

[tls]
cert = "{certs / 'platform' / 'node.crt'}"
key = "{certs / 'platform' / 'node.key'}"
peer_ca = "{certs / 'bank' / 'ca.crt'}"
peer_crl = "{certs / 'bank' / 'crl.pem'}"

[data]
path = "{platform_data.resolve()}"
id_column = "{platform_id_column}"
fill_missing = "{fill_missing}"
in_memory_mb = {in_memory_mb:g}
"""
    bank_path, platform_path = workdir / "bank.toml", workdir / "platform.toml"
    atomic_write(bank_path, bank.encode())
    atomic_write(platform_path, platform.encode())
    return bank_path, platform_path


class NodeFailed(FedProfileError):
    """A node process exited or never became ready; the message holds its log's tail."""


class LocalCluster:
    def __init__(self, workdir: Path, *, bank_data: Path, bank_id_column: str, platform_data: Path,
                 platform_id_column: str, bank_tag_columns: Sequence[str] = (), workers: int = 2,
                 fill_missing: str = "error", start_timeout_s: float = 120.0, in_memory_mb: float = 1024) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bank_port, self.platform_port = free_port(), free_port()
        self.certs = init_local_pki(self.workdir / "certs", operators=[OPERATOR])
        self.bank_config, self.platform_config = write_configs(
            self.workdir, bank_data=Path(bank_data), bank_id_column=bank_id_column,
            bank_tag_columns=bank_tag_columns, platform_data=Path(platform_data),
            platform_id_column=platform_id_column, bank_port=self.bank_port, platform_port=self.platform_port,
            workers=workers, fill_missing=fill_missing, in_memory_mb=in_memory_mb)
        self.start_timeout_s = start_timeout_s
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._clients: list[BankClient] = []

    def _start(self, role: str, module: str, config: Path) -> None:
        log_path = self.workdir / f"{role}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the child process owns it for its lifetime
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.processes[role] = subprocess.Popen(
            [sys.executable, "-m", module, "serve", "--config", str(config)],
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=env)

    def start(self) -> LocalCluster:
        self._start("platform", "party_platform.cli", self.platform_config)
        self._start("bank", "party_bank.cli", self.bank_config)
        client = self.bank_client()
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            for role, proc in self.processes.items():
                if proc.poll() is not None:
                    raise NodeFailed(f"the {role} node exited with code {proc.returncode}:\n{self.log_tail(role)}")
            try:
                client.wait_ready(timeout_s=2.0)
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise NodeFailed(f"the bank node did not become ready:\n{self.log_tail('bank')}") from None

    def bank_client(self) -> BankClient:
        client = BankClient(f"127.0.0.1:{self.bank_port}", cert=self.certs[f"operator_cert:{OPERATOR}"],
                            key=self.certs[f"operator_key:{OPERATOR}"], ca=self.certs["bank_ca"])
        self._clients.append(client)
        return client

    @property
    def operator_args(self) -> list[str]:
        """`bank-node` client options that present the harness operator's own certificate."""
        return ["--cert", str(self.certs[f"operator_cert:{OPERATOR}"]),
                "--key", str(self.certs[f"operator_key:{OPERATOR}"])]

    def bank_alignment(self, job_id: str) -> Alignment:
        """An alignment from the bank node's state (the harness may read it; a real deployment is one side)."""
        return FileAlignmentStore(self.workdir / "state" / "bank" / "alignments").load(job_id)

    def kill(self, role: str) -> None:
        """SIGKILL one node (no clean-up of any kind) and reap it."""
        proc = self.processes[role]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def restart(self, role: str) -> None:
        """Start a node again, as its operator would, after :meth:`kill` (same config and state directory)."""
        if self.processes[role].poll() is None:
            raise NodeFailed(f"the {role} node is still running")
        self._start(role, f"party_{role}.cli", self.bank_config if role == "bank" else self.platform_config)

    def pids(self) -> dict[str, int]:
        return {role: proc.pid for role, proc in self.processes.items()}

    def log_tail(self, role: str, lines: int = 30) -> str:
        path = self.workdir / f"{role}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> dict[str, int]:
        """SIGTERM both nodes (graceful shutdown) and return their exit codes."""
        for client in self._clients:
            client.close()
        codes: dict[str, int] = {}
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for role, proc in self.processes.items():
            try:
                codes[role] = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[role] = proc.wait()
        return codes

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
