"""`platform-node`: run the platform's node, and see and control everything it takes part in.

    platform-node serve --config platform.toml
    platform-node jobs --config platform.toml [--status S] [--limit N] [--json]
    platform-node models --config platform.toml [--json]
    platform-node approve JOB --config platform.toml [--refuse]
    platform-node revoke MODEL --config platform.toml
    platform-node audit --config platform.toml [--job JOB] [--event E] [--limit N] [--json]
    platform-node policy --config platform.toml
    platform-node preflight --config platform.toml   (config, data, certificates, policy: checked before the first job)
    platform-node scorecard MODEL --config platform.toml [--tag T] --out FILE.csv|.json [--pdo 20]
    platform-node console --config platform.toml [--port 8081]   (the same in a browser: party_platform/console.py)

The commands besides `serve` work on the node's state directory on this host (beside the running node):
approval and revocation take effect on the node's next call.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1.health import HealthServicer
from rich.console import Console
from rich.table import Table as RichTable

from party_common.cli_format import (
    DefaultsFormatter,
    config_help,
    record_table,
    resolve_config,
    version_string,
)
from party_common.config import NodeConfig, load_config
from party_common.jobs import SESSION_KINDS
from party_common.preflight import platform_preflight
from party_common.runtime import (
    INSECURE_WARNING,
    TlsFiles,
    read_tls_files,
    serve_with_metrics,
    setup_logging,
    start_node_server,
)
from party_common.state_lock import StateLock, under_state_lock
from party_common.storage.files import atomic_write_with
from party_common.storage.jobs import STATUSES
from party_common.transport import MAX_GRPC_MESSAGE
from party_platform import admin
from party_platform.node import PlatformNode
from party_platform.service import NodeServicer
from party_platform.sessions import SessionRegistry
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.errors import FedProfileError, UserError
from protocols.scorecard import DEFAULT_PDO, to_csv

log = logging.getLogger("party_platform")


def build_server(config_path: str, *,
                 insecure_dev: bool = False) -> tuple[grpc.Server, HealthServicer, PlatformNode, SessionRegistry, int]:
    """Load config and data and start the Node service; return (server, health, node, sessions, port)."""
    config = load_config(config_path, expected_role="platform", require_tls=not insecure_dev)
    tls = None if insecure_dev else read_tls_files(config)
    # before anything reads its state
    return under_state_lock(config.state_dir, "platform node", lambda lock: _build_server(config, tls, insecure_dev, lock))


def _build_server(config: NodeConfig, tls: TlsFiles | None, insecure_dev: bool,
                  state_lock: StateLock) -> tuple[grpc.Server, HealthServicer, PlatformNode, SessionRegistry, int]:
    node = PlatformNode(config)
    node.state_lock = state_lock
    registry = SessionRegistry(node.open_session, kinds=SESSION_KINDS,
                               max_sessions=config.policy.max_concurrent_jobs, idle_s=config.session_idle_s)
    registry.start_expiry()  # a bank killed mid-job never closes its session
    servicer = NodeServicer(node, registry, max_payload_bytes=config.max_payload_mb * 2**20)
    server, health, port = start_node_server(
        config, lambda s: pb_grpc.add_NodeServicer_to_server(servicer, s), ["fedprofile.v1.Node"],
        tls=tls, client_ca=tls.peer_ca if tls else None, audit=node.stores.jobs)  # only the bank's CA connects
    return server, health, node, registry, port


def serve(args: argparse.Namespace) -> int:
    if args.insecure_dev:
        print(INSECURE_WARNING, file=sys.stderr)
    try:
        server, health, node, registry, port = build_server(args.config, insecure_dev=args.insecure_dev)
    except FedProfileError as err:
        print(f"platform-node: {err}", file=sys.stderr)
        return 2
    log.info("platform node '%s' listening on port %d (max gRPC message %d bytes)", node.config.name, port,
             MAX_GRPC_MESSAGE)
    return serve_with_metrics("platform-node", server, health, registry.close_all,
                              metrics_listen=node.config.metrics_listen, jobs=node.stores.jobs)


def print_table(table: admin.Table, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(table.as_dicts(), indent=2))
        return
    # Names (job and model IDs, tags, certificate names) are never cut: columns fold, never truncate; outside a
    # terminal the table gets room instead of 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 240)
    out = RichTable(title=table.title)
    for column in table.columns:
        out.add_column(column, overflow="fold")
    for row in table.rows:
        out.add_row(*row)
    console.print(out)
    if not table.rows:
        console.print("(none)")


def write_scorecard(table: dict[str, Any], out: Path, *, overwrite: bool) -> None:
    """The platform's points table as CSV or JSON (by ``out``'s suffix), written atomically, 0600."""
    if out.suffix not in (".csv", ".json"):
        raise UserError(f"{out}: a scorecard is written as .csv or .json")
    text = to_csv(table) if out.suffix == ".csv" else json.dumps(table, indent=2, sort_keys=True) + "\n"
    try:
        atomic_write_with(out, lambda f: f.write(text.encode()), mode=0o600, overwrite=overwrite)
    except FileExistsError:
        raise UserError(f"{out} exists: pass --overwrite to replace it") from None
    print(f"wrote the platform's scorecard of model {table['model']} ({', '.join(table['tags'])}) to {out}")


def admin_command(args: argparse.Namespace, config: NodeConfig) -> int:
    stores = admin.open_stores(config)
    if args.command == "jobs":
        print_table(admin.jobs_table(stores, limit=args.limit, status=args.status), as_json=args.json)
    elif args.command == "models":
        print_table(admin.models_table(stores, config.policy.allowed_models), as_json=args.json)
    elif args.command == "audit":
        print_table(admin.audit_table(stores, job_id=args.job, event=args.event, limit=args.limit),
                    as_json=args.json)
    elif args.command == "approve":
        print(admin.approve(stores, args.job, refuse=args.refuse))
    elif args.command == "revoke":
        print(admin.revoke(stores, args.model))
    elif args.command == "scorecard":
        write_scorecard(admin.scorecard(stores, args.model, args.tag or [], pdo=args.pdo), Path(args.out),
                        overwrite=args.overwrite)
    elif args.command == "policy":
        released = config.max_released_projections
        policy = {**config.policy.describe(), "max_released_projections": released}
        print(json.dumps(policy, indent=2) if args.json else
              record_table(policy, title=f"the policy of {config.name} ([policy] of {config.source})",
                           header=("KNOB", "VALUE")))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="platform-node", description="The e-commerce platform's node.",
                                formatter_class=DefaultsFormatter)
    p.add_argument("--version", action="version", version=version_string("platform-node"))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_p = sub.add_parser("serve", help="answer the bank node's PSI, training and scoring calls")
    serve_p.add_argument("--insecure-dev", action="store_true", help="plaintext gRPC, no client auth (laptop only)")
    serve_p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                         help="the node's log level")
    jobs = sub.add_parser("jobs", help="the jobs this node took part in, who asked and how they ended")
    jobs.add_argument("--status", choices=STATUSES)
    jobs.add_argument("--limit", type=int, default=50)
    models = sub.add_parser("models", help="this node's model halves: status, score calls, rows answered")
    approve = sub.add_parser("approve", help="approve a job waiting for approval ([policy] approval = \"manual\")")
    approve.add_argument("job", help="the job ID (see `platform-node jobs --status 'awaiting approval'`)")
    approve.add_argument("--refuse", action="store_true", help="refuse it instead: the bank's job fails")
    revoke = sub.add_parser("revoke", help="answer no more partial scores for a model")
    revoke.add_argument("model", help="the model's train job ID (see `platform-node models`)")
    audit = sub.add_parser("audit", help="the audit log: who asked what, counts and outcomes")
    audit.add_argument("--job", help="only this job's or model's rows")
    audit.add_argument("--event", help="only this event (e.g. 'partial scores')")
    audit.add_argument("--limit", type=int, default=100, help="the newest N rows (default 100)")
    policy = sub.add_parser("policy", help="the policy this node enforces ([policy] of its config)")
    preflight = sub.add_parser("preflight", help="check this node's set-up before the first job: config, data "
                               "(empty and constant columns), certificates and keys, its policy against its data; "
                               "one table, exit code 1 when a check fails")
    card = sub.add_parser("scorecard", help="this node's half of a binned model as a points table per tag "
                          "(CSV or JSON by --out's suffix): points per bin of its own features only")
    card.add_argument("model", help="the model's train job ID (see `platform-node models`)")
    card.add_argument("--tag", action="append", help="a tag (repeat for more; default: every tag)")
    card.add_argument("--out", required=True, help="file to write: .csv or .json")
    card.add_argument("--pdo", type=float, default=DEFAULT_PDO, help="points to double the odds (the bank's "
                      "table must use the same)")
    card.add_argument("--overwrite", action="store_true", help="replace the file if it exists")
    console = sub.add_parser("console", help="the same in a browser: a web console on 127.0.0.1 of this host "
                             "(approval queue, jobs, audit, disclosure budget, models, policy); prints its link")
    console.add_argument("--port", type=int, default=8081, help="local port of the console (0: any free one)")
    for command in (serve_p, jobs, models, approve, revoke, audit, policy, preflight, console, card):
        command.formatter_class = DefaultsFormatter
        command.add_argument("--config", help=config_help("platform"))
    for command in (jobs, models, audit, policy, preflight):
        command.add_argument("--json", action="store_true", help="JSON instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.config = resolve_config(args.config, "platform", "platform-node")
    if args.command == "serve":
        setup_logging(args.log_level)
        return serve(args)
    if args.command == "preflight":
        checks = platform_preflight(args.config)
        print(checks.as_json() if args.json else checks.table(f"preflight of the platform node ({args.config})"))
        return 1 if checks.failed else 0
    try:
        config = load_config(args.config, expected_role="platform", require_tls=False)
        if args.command == "console":
            from party_common.console import new_token, serve_console
            from party_platform.console import build_app

            return serve_console(build_app(config, token=new_token()), port=args.port, program="platform-node")
        return admin_command(args, config)
    except FedProfileError as err:
        print(f"platform-node {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
