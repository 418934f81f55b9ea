"""The PSI implementations ``benchmarks/psi.py`` compares ours with, each on the same IDs, each checked.

* ``openmined``: OpenMined's ECDH P-256 PSI (``openmined-psi``, reveal_intersection=True) in one process,
  its messages serialised to bytes and parsed back, no network, one thread. It pins protobuf below ours, so
  it may live in another environment too: then it runs there (``python psi_peers.py openmined ...``), timed
  the same way, from the first message to the intersection.
* ``secretflow-ecdh`` and ``secretflow-rr22``: SecretFlow's PSI library (the ``spu`` package,
  ``spu.psi.psi_execute``; ECDH on Curve25519, and RR22, the OT-based protocol), both parties as separate
  processes (``benchmarks/secretflow_peer.py``) on SecretFlow's own brpc link over loopback, no TLS. ``spu``
  pins numpy below 2, so it may live in another environment: ``--peer-python`` names that interpreter.

A peer that cannot run here is reported as unavailable, with the reason, never left out silently.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PEERS = ("openmined", "secretflow-ecdh", "secretflow-rr22")
SECRETFLOW_RUNNER = Path(__file__).with_name("secretflow_peer.py")
Sampler = Callable[[dict[str, int]], Any]  # benchmarks.psi._sampler: pids -> RssSampler | None


def openmined(bank: list[str], platform: list[str], expected: set[str],
              found_out: list[str] | None = None) -> dict[str, Any]:
    """Bank = OpenMined client (learns the intersection), platform = server; messages go through bytes."""
    import private_set_intersection.python as psi

    started = time.monotonic()
    client = psi.client.CreateWithNewKey(True)
    server = psi.server.CreateWithNewKey(True)
    setup_bytes = server.CreateSetupMessage(0.0, len(bank), platform, psi.DataStructure.RAW).SerializeToString()
    request_bytes = client.CreateRequest(bank).SerializeToString()
    request = psi.Request()
    request.ParseFromString(request_bytes)
    response_bytes = server.ProcessRequest(request).SerializeToString()
    setup, response = psi.ServerSetup(), psi.Response()
    setup.ParseFromString(setup_bytes)
    response.ParseFromString(response_bytes)
    indices = client.GetIntersection(setup, response)
    seconds = time.monotonic() - started
    found = {bank[i] for i in indices}
    if found_out is not None:
        found_out.extend(found)
    return {"seconds": round(seconds, 3), "size": len(found), "correct": found == expected,
            "bytes_exchanged": len(setup_bytes) + len(request_bytes) + len(response_bytes),
            "curve": "P-256", "threads": 1, "network": False}


def openmined_elsewhere(bank: list[str], platform: list[str], expected: set[str], python: str) -> dict[str, Any]:
    """:func:`openmined` run by another interpreter (this file as a script), on the same IDs."""
    with tempfile.TemporaryDirectory(prefix="bench-openmined-") as tmp:
        work = Path(tmp)
        _write_ids(work / "bank.csv", bank)
        _write_ids(work / "platform.csv", platform)
        done = subprocess.run([python, __file__, "openmined", str(work / "bank.csv"), str(work / "platform.csv"),
                               str(work / "found.csv")], capture_output=True, text=True, timeout=7200)
        if done.returncode:
            raise RuntimeError(f"OpenMined under {python} failed:\n{done.stderr[-2000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        found = set(_read_ids(work / "found.csv"))
    figures["correct"] = found == expected
    figures["interpreter"] = python
    return figures


def unavailable(python: str, module: str, package: str) -> str | None:
    """Why ``python`` cannot import ``module`` (from PyPI ``package``), or None if it can."""
    try:
        done = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{python} cannot be run: {err}"
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"{package} cannot be imported by {python} ({last}); install the [bench] extra, or use --peer-python"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _write_ids(path: Path, ids: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id"])
        writer.writerows([i] for i in ids)


def _read_ids(path: Path) -> list[str]:
    with path.open(newline="") as f:
        rows = csv.reader(f)
        next(rows, None)
        return [row[0] for row in rows if row]


def secretflow(protocol: str, bank: list[str], platform: list[str], expected: set[str], python: str,
               sampler: Sampler) -> dict[str, Any]:
    """Both parties as processes; ``seconds`` is the slower party's ``psi_execute``; both outputs checked."""
    with tempfile.TemporaryDirectory(prefix=f"bench-sf-{protocol}-") as tmp:
        work = Path(tmp)
        ports = ",".join(map(str, _free_ports(2)))
        procs = []
        for rank, ids in enumerate((bank, platform)):
            _write_ids(work / f"in{rank}.csv", ids)
        started = time.monotonic()
        for rank in (0, 1):
            log = (work / f"party{rank}.log").open("w")
            procs.append(subprocess.Popen(
                [python, str(SECRETFLOW_RUNNER), "--rank", str(rank), "--protocol", protocol, "--ports", ports,
                 "--input", str(work / f"in{rank}.csv"), "--output", str(work / f"out{rank}.csv")],
                stdout=log, stderr=subprocess.STDOUT, cwd=work))
        rss = sampler({"receiver": procs[0].pid, "sender": procs[1].pid})
        try:
            if rss:
                with rss:
                    codes = [p.wait(timeout=7200) for p in procs]
            else:
                codes = [p.wait(timeout=7200) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        wall = time.monotonic() - started
        reports, found = [], []
        for rank, code in enumerate(codes):
            text = (work / f"party{rank}.log").read_text(errors="replace")
            if code:
                raise RuntimeError(f"SecretFlow {protocol} party {rank} exited with {code}:\n{text[-2000:]}")
            reports.append(json.loads([line for line in text.splitlines() if line.startswith("{")][-1]))
            found.append(_read_ids(work / f"out{rank}.csv"))
    seconds = max(r["seconds"] for r in reports)
    correct = all(set(f) == expected and len(f) == len(expected) for f in found)
    peak = {k: round(v, 1) for k, v in rss.peak.items()} if rss else {}
    return {"seconds": seconds, "wall_seconds": round(wall, 3), "size": len(found[0]), "correct": correct,
            "protocol": "ECDH, Curve25519" if protocol == "ecdh" else "RR22 (OT-based)",
            "peak_rss_mb": max(peak.values()) if peak else None, "peak_rss_mb_per_party": peak or None,
            "transport": "brpc over loopback, no TLS", "processes": 2}


def run_peers(names: list[str], bank: list[str], platform: list[str], expected: set[str], *,
              peer_python: str | None, sampler: Sampler, say: Callable[[str], None]) -> dict[str, Any]:
    """``{name: figures or None}`` plus ``{name}_unavailable`` reasons, for each requested peer."""
    out: dict[str, Any] = {}
    # Absolute (the peers run in other working directories), but not resolved: a venv's python is a symlink
    # to the base interpreter, and following it would lose the venv's packages.
    python = os.path.abspath(peer_python) if peer_python else sys.executable
    for name in names:
        figures: dict[str, Any] | None = None
        reason: str | None = None
        if name == "openmined":
            reason = unavailable(sys.executable, "private_set_intersection.python", "openmined-psi")
            if reason is None:
                say("OpenMined PSI (in-process, single-threaded) ...")
                figures = openmined(bank, platform, expected)
            elif python != sys.executable:
                reason = unavailable(python, "private_set_intersection.python", "openmined-psi")
                if reason is None:
                    say(f"OpenMined PSI (single-threaded, under {python}) ...")
                    figures = openmined_elsewhere(bank, platform, expected, python)
        else:
            reason = unavailable(python, "spu.psi, spu.libspu.link", "spu")
            if reason is None:
                say(f"SecretFlow {name} (two processes, brpc on loopback) ...")
                figures = secretflow(name.removeprefix("secretflow-"), bank, platform, expected, python, sampler)
        if reason:
            say(f"[yellow]{name} unavailable: {reason.replace('[', chr(92) + '[')}[/]")  # not rich markup
            out[f"{name}_unavailable"] = reason
        elif figures is not None and not figures["correct"]:
            say(f"[red]{name} returned a different intersection[/]")
        out[name] = figures
    return out


def _main(argv: list[str]) -> None:
    """``psi_peers.py openmined BANK_CSV PLATFORM_CSV FOUND_CSV``: print the figures as JSON, write the IDs found."""
    if len(argv) != 4 or argv[0] != "openmined":
        raise SystemExit("usage: psi_peers.py openmined BANK_CSV PLATFORM_CSV FOUND_CSV")
    bank, platform = _read_ids(Path(argv[1])), _read_ids(Path(argv[2]))
    found: list[str] = []
    figures = openmined(bank, platform, set(), found)
    figures.pop("correct")
    with Path(argv[3]).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id"])
        writer.writerows([i] for i in found)
    print(json.dumps(figures))


__all__ = ["PEERS", "openmined", "openmined_elsewhere", "run_peers", "secretflow", "unavailable"]


if __name__ == "__main__":
    _main(sys.argv[1:])
