"""One short TOML file per node. Every error names the file, the key and what to change.

Example (bank)::

    [node]
    name = "acme-bank"
    role = "bank"
    listen = "127.0.0.1:7443"        # the bank: control API for data scientists
    state_dir = "state/bank"
    workers = 2
    # session_idle_s = 900           # platform only: close a session with no step for this long

    [peer]
    address = "platform.example.com:7444"
    tls_name = "platform"            # name in the peer's certificate (SAN), when it differs from the host
                                     # (platform: required; the bank node certificate's name, its only caller)
    retry_deadline_s = 600           # a job waits this long for an unreachable platform, then fails

    [tls]
    cert = "certs/bank/node.crt"     # this node's certificate (server and client)
    key = "certs/bank/node.key"      # its private key, mode 0600
    peer_ca = "certs/platform/ca.crt"     # the CA that signed the peer's certificate
    peer_crl = "certs/platform/crl.pem"   # that CA's revocation list (read again when it changes)
    client_ca = "certs/bank/ca.crt"  # bank only: CA of the data scientists' operator certificates
    client_crl = "certs/bank/crl.pem"     # bank only: its revocation list

    [compute]                        # optional: where the heavy kernels run (docs/scaling.md)
    backend = "pool"                 # local processes ([node] workers of them), or "ray"
    address = "auto"                 # ray only: "auto", "local", or the head's "host:6379"

    [data]
    path = "data/bank.csv"
    id_column = "id"
    tag_columns = ["tag_young_family", "tag_car_owner"]   # bank only
    fill_missing = "error"           # or "zero" / "mean"

    [client]                         # how the CLI on this machine reaches the control API (optional)
    address = "127.0.0.1:7443"       # default: `listen`, with 0.0.0.0 / [::] read as 127.0.0.1
    tls_name = "acme-bank"           # name in the node's certificate to check (default: the address's host)

    [metrics]                        # optional: Prometheus metrics over plain HTTP
    listen = "127.0.0.1:9443"        # off when absent

    [binning]                        # optional: how this node bins its own columns (protocols.binning.spec)
    bins = 10
    [binning.columns.EDUCATION]
    kind = "categorical"

Relative paths are resolved against the config file's folder. The platform's ``[policy]`` table is described
in ``party_common.policy``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from party_common.known_keys import BINNING_COLUMN_KEYS, BINNING_KEYS, unknown_key_message
from party_common.policy import KNOWN_KEYS as POLICY_KEYS
from party_common.policy import PolicyConfig, parse_policy
from protocols.binning import BinningSpec
from protocols.compute import BACKENDS
from protocols.errors import UserError

Role = Literal["bank", "platform"]
FILL_OPTIONS = ("error", "zero", "mean")


class ConfigError(UserError):
    """The node's config file is wrong; the message says where and what to change."""


# Every key each table may hold: anything else is refused with these and the nearest spelling.
KNOWN_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"node", "peer", "tls", "data", "compute", "client", "metrics", "policy",
                   "binning"}),
    "node": frozenset({"name", "role", "listen", "state_dir", "workers", "step_timeout_s", "max_payload_mb",
                       "session_idle_s"}),
    "peer": frozenset({"address", "tls_name", "retry_deadline_s"}),
    "tls": frozenset({"cert", "key", "peer_ca", "client_ca", "peer_crl", "client_crl"}),
    "data": frozenset({"path", "id_column", "tag_columns", "feature_columns", "fill_missing", "in_memory_mb"}),
    "compute": frozenset({"backend", "address", "workers"}),
    "client": frozenset({"address", "tls_name"}),
    "metrics": frozenset({"listen"}),
    "policy": POLICY_KEYS,
    "binning": BINNING_KEYS,
}


def _refuse_unknown_keys(doc: dict[str, Any], path: Path) -> None:
    refusal = unknown_key_message(doc, KNOWN_KEYS[""], f"{path}")
    if refusal:
        raise ConfigError(refusal.replace("unknown key", "unknown section", 1).replace("valid keys", "valid sections"))
    for section, known in KNOWN_KEYS.items():
        table = doc.get(section) if section else None
        if isinstance(table, dict):
            refusal = unknown_key_message(table, known, f"{path} [{section}]")
            if refusal:
                raise ConfigError(refusal)


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    peer_ca: Path
    client_ca: Path | None = None
    peer_crl: Path | None = None
    client_crl: Path | None = None


@dataclass(frozen=True)
class DataConfig:
    path: Path
    id_column: str
    tag_columns: tuple[str, ...] = ()
    feature_columns: tuple[str, ...] | None = None
    fill_missing: str = "error"
    in_memory_mb: float = 1024.0  # a larger feature matrix is memory-mapped from <state_dir>/tmp


@dataclass(frozen=True)
class ComputeConfig:
    backend: str = "pool"  # "pool" (local processes) or "ray"
    address: str = "auto"  # ray: "auto", "local", "host:6379" or "ray://host:10001"
    workers: int | None = None  # ray: actors per session (None = every CPU of the cluster)


@dataclass(frozen=True)
class NodeConfig:
    source: Path
    name: str
    role: Role
    listen: str
    state_dir: Path
    peer_address: str  # empty on the platform, which never dials
    peer_tls_name: str | None
    tls: TlsConfig | None
    data: DataConfig
    workers: int = 2
    step_timeout_s: float = 900.0
    max_payload_mb: int = 1024
    # Platform: distinct projections of its features (scorable model tags) released per alignment; None =
    # half its feature count (see docs/protocol.md, "Scoring").
    max_released_projections: int | None = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)  # the platform's other [policy] knobs
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    # [client]: where a data scientist's CLI dials the control API, and the name to check in its certificate.
    client_address: str = ""
    client_tls_name: str | None = None
    metrics_listen: str | None = None  # [metrics] listen: Prometheus endpoint, off when None
    # Bank: how long a job waits for an unreachable platform (retrying with backoff) before it fails.
    peer_retry_deadline_s: float = 600.0
    # Platform: a session with no step for this long is closed (a bank killed mid-job never closes it).
    session_idle_s: float = 900.0
    binning: BinningSpec = field(default_factory=BinningSpec)  # [binning]: how this node bins its own columns
    extra: dict[str, Any] = field(default_factory=dict)


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, *, required: bool = True,
         default: Any = None) -> Any:
    if key not in table:
        if required:
            raise ConfigError(f"{where}: missing key '{key}'")
        return default
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: '{key}' must be a {want}, got {value!r}")
    return value


def _address(value: str, where: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: '{value}' is not host:port (e.g. 127.0.0.1:7443)")
    return value


WILDCARD_HOSTS = ("0.0.0.0", "[::]", "::", "")


def local_address(listen: str) -> str:
    """``listen`` as a client on the same machine dials it: a wildcard host becomes 127.0.0.1."""
    host, _, port = listen.rpartition(":")
    return f"127.0.0.1:{port}" if host in WILDCARD_HOSTS else listen


def load_config(path: str | Path, *, expected_role: Role, require_tls: bool = True) -> NodeConfig:
    """Read and check a node config. ``require_tls=False`` only with ``--insecure-dev``."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    base = path.resolve().parent
    _refuse_unknown_keys(doc, path)

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else base / q

    # The bank dials the platform; the platform only answers, so it needs no peer address.
    for section in ("node", "data", "peer") if expected_role == "bank" else ("node", "data"):
        if not isinstance(doc.get(section), dict):
            raise ConfigError(f"{path}: missing section [{section}]")
    node, data = doc["node"], doc["data"]
    peer = doc.get("peer", {})
    if not isinstance(peer, dict):
        raise ConfigError(f"{path}: [peer] must be a table")
    role = _get(node, "role", str, f"{path} [node]", required=False, default=expected_role)
    if role != expected_role:
        raise ConfigError(f"{path} [node]: role is '{role}' but this is the {expected_role} node's command")
    workers = _get(node, "workers", int, f"{path} [node]", required=False, default=2)
    if workers < 1:
        raise ConfigError(f"{path} [node]: 'workers' must be at least 1")

    tls: TlsConfig | None = None
    if "tls" in doc:
        t = doc["tls"]
        where = f"{path} [tls]"
        tls = TlsConfig(
            cert=resolve(_get(t, "cert", str, where)),
            key=resolve(_get(t, "key", str, where)),
            peer_ca=resolve(_get(t, "peer_ca", str, where)),
            client_ca=resolve(c) if (c := _get(t, "client_ca", str, where, required=False)) else None,
            peer_crl=resolve(c) if (c := _get(t, "peer_crl", str, where, required=False)) else None,
            client_crl=resolve(c) if (c := _get(t, "client_crl", str, where, required=False)) else None,
        )
        for key in ("cert", "key", "peer_ca", "client_ca", "peer_crl", "client_crl"):
            p = getattr(tls, key)
            if p is not None and not p.exists():
                raise ConfigError(f"{where}: '{key}' file {p} does not exist (make them with `fedprofile-certs`)")
        if role == "bank" and tls.client_ca is None:
            raise ConfigError(f"{where}: the bank node needs 'client_ca' (the CA of its data scientists' certificates)")
        if role == "platform" and (tls.client_ca or tls.client_crl):
            raise ConfigError(f"{where}: the platform serves only the bank node; remove 'client_ca'/'client_crl'")
        if role == "platform" and not isinstance(peer.get("tls_name"), str):
            raise ConfigError(f"{path} [peer]: the platform needs 'tls_name', the name in the bank node's "
                              "certificate (e.g. tls_name = \"bank\"): only that node may call it")
    elif require_tls:
        raise ConfigError(f"{path}: missing section [tls]; mutual TLS is required (use --insecure-dev only on a laptop)")

    where = f"{path} [data]"
    tag_columns = _get(data, "tag_columns", list, where, required=False, default=[])
    if role == "platform" and tag_columns:
        raise ConfigError(f"{where}: the platform holds no tags; remove 'tag_columns'")
    if role == "bank" and not tag_columns:
        # Without tags every column of the file would become a feature (tags included), and nothing could train.
        raise ConfigError(f"{where}: the bank node needs at least one tag: add 'tag_columns' with the 0/1 label "
                          "columns of its file (e.g. tag_columns = [\"tag_car_owner\"])")
    feature_columns = _get(data, "feature_columns", list, where, required=False)
    fill = _get(data, "fill_missing", str, where, required=False, default="error")
    if fill not in FILL_OPTIONS:
        raise ConfigError(f"{where}: 'fill_missing' must be one of {', '.join(FILL_OPTIONS)}, got '{fill}'")
    in_memory_mb = _get(data, "in_memory_mb", (int, float), where, required=False, default=1024)
    if isinstance(in_memory_mb, bool) or in_memory_mb < 0:
        raise ConfigError(f"{where}: 'in_memory_mb' must be a number of megabytes >= 0, got {in_memory_mb!r}")
    data_cfg = DataConfig(
        path=resolve(_get(data, "path", str, where)),
        id_column=_get(data, "id_column", str, where),
        tag_columns=tuple(str(c) for c in tag_columns),
        feature_columns=tuple(str(c) for c in feature_columns) if feature_columns is not None else None,
        fill_missing=fill,
        in_memory_mb=float(in_memory_mb),
    )
    tls_name = _get(peer, "tls_name", str, f"{path} [peer]", required=False)
    policy = doc.get("policy", {})
    if not isinstance(policy, dict):
        raise ConfigError(f"{path}: [policy] must be a table")
    if policy and role != "platform":
        raise ConfigError(f"{path} [policy]: only the platform node has a policy section")
    client = doc.get("client", {})
    metrics = doc.get("metrics", {})
    for section, table in (("client", client), ("metrics", metrics)):
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
    listen = _address(_get(node, "listen", str, f"{path} [node]"), f"{path} [node] listen")
    client_address = _get(client, "address", str, f"{path} [client]", required=False)
    metrics_listen = _get(metrics, "listen", str, f"{path} [metrics]", required=False)
    released = _get(policy, "max_released_projections", int, f"{path} [policy]", required=False)
    compute = _compute(doc.get("compute", {}), f"{path} [compute]")
    if released is not None and released < 1:
        raise ConfigError(f"{path} [policy]: 'max_released_projections' must be at least 1")
    try:
        policy_cfg = parse_policy(policy, f"{path} [policy]")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return NodeConfig(
        source=path,
        name=_get(node, "name", str, f"{path} [node]"),
        role=role,
        listen=listen,
        state_dir=resolve(_get(node, "state_dir", str, f"{path} [node]")),
        peer_address=_address(_get(peer, "address", str, f"{path} [peer]"), f"{path} [peer] address")
        if role == "bank" else "",
        peer_tls_name=tls_name,
        tls=tls,
        data=data_cfg,
        workers=workers,
        step_timeout_s=float(_get(node, "step_timeout_s", (int, float), f"{path} [node]", required=False,
                                  default=900.0)),
        max_payload_mb=_get(node, "max_payload_mb", int, f"{path} [node]", required=False, default=1024),
        max_released_projections=released,
        policy=policy_cfg,
        compute=compute,
        client_address=_address(client_address, f"{path} [client] address") if client_address
        else local_address(listen),
        client_tls_name=_get(client, "tls_name", str, f"{path} [client]", required=False),
        metrics_listen=_address(metrics_listen, f"{path} [metrics] listen") if metrics_listen else None,
        peer_retry_deadline_s=_seconds(peer, "retry_deadline_s", f"{path} [peer]", 600.0),
        session_idle_s=_seconds(node, "session_idle_s", f"{path} [node]", 900.0),
        binning=_binning(doc.get("binning", {}), f"{path} [binning]"),
    )


def _binning(table: Any, where: str) -> BinningSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [binning] must be a table")
    columns = table.get("columns", {})
    for name, column in columns.items() if isinstance(columns, dict) else ():
        refusal = isinstance(column, dict) and unknown_key_message(column, BINNING_COLUMN_KEYS,
                                                                   f"{where} column '{name}'")
        if refusal:
            raise ConfigError(refusal)
    try:
        return BinningSpec.from_dict(table, where)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _compute(table: Any, where: str) -> ComputeConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [compute] must be a table")
    backend = _get(table, "backend", str, where, required=False, default="pool")
    if backend not in BACKENDS:
        raise ConfigError(f"{where}: 'backend' must be one of {', '.join(BACKENDS)}, got '{backend}'")
    address = _get(table, "address", str, where, required=False, default="auto")
    workers = _get(table, "workers", int, where, required=False)
    if workers is not None and workers < 1:
        raise ConfigError(f"{where}: 'workers' must be at least 1")
    if backend == "pool" and (workers is not None or "address" in table):
        raise ConfigError(f"{where}: 'address' and 'workers' are for backend = \"ray\" (the pool uses [node] workers)")
    return ComputeConfig(backend=backend, address=address, workers=workers)


def _seconds(table: dict[str, Any], key: str, where: str, default: float) -> float:
    value = float(_get(table, key, (int, float), where, required=False, default=default))
    if not value > 0:
        raise ConfigError(f"{where}: '{key}' must be a positive number of seconds, got {value}")
    return value
