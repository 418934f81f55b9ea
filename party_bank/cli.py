"""`bank-node`: run the bank's node, and drive it (align, train, score) as a data scientist.

    bank-node serve --config bank.toml
    bank-node align --config bank.toml [--mode both|bank_only|cardinality] [--protocol ot|ecdh] [--incremental [--new-key]]
    bank-node train --config bank.toml [--tags t1,t2] [--epochs 5 ...]
    bank-node jobs --config bank.toml | wait JOB_ID | logs JOB_ID | rerun JOB_ID | cancel JOB_ID
    bank-node score --config bank.toml --model JOB_ID --ids ID1,ID2
    bank-node batch-score --config bank.toml --model JOB_ID --out scores.parquet [--all-customers | --ids-file F]
    bank-node segment | segment-result | segments ... (campaign segments: party_bank/cli_segments.py)
    bank-node stability | scorecard ... (population stability, points tables: party_bank/cli_stability.py)
    bank-node report --config bank.toml JOB_ID --out report.html [--overwrite]
    bank-node models --config bank.toml [--json] | alias NAME@LABEL MODEL | unalias ALIAS | retire MODEL
    bank-node fetch --config bank.toml scores|segment NAME --out FILE   (download a score or segment file)
    bank-node console --config bank.toml [--port 8080]     (the same in a browser: party_bank/console.py)
    bank-node preflight --config bank.toml [--platform-config platform.toml]   (the set-up, checked: preflight.py)

The client commands reach the node's control API at `[client] address` (default: its `listen` address, a
wildcard host read as 127.0.0.1) with mutual TLS, checking the name `[client] tls_name` in the node's
certificate, using the person's own operator certificate from the bank's CA (`fedprofile-certs operator NAME`;
default: operators/$USER.crt and .key in the folder of the node's certificate, or --cert/--key). Every failure
is one plain line on stderr (exit code 1; 2 for a wrong config).
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1.health import HealthServicer

from party_bank import cli_files, cli_models, cli_screen, cli_segments, cli_stability, preflight, views
from party_bank.client import BankClient, JobFailed
from party_bank.control import ControlServicer
from party_bank.control_v2 import SERVICE as SCORING_SERVICE
from party_bank.control_v2 import add_scoring_service
from party_bank.grpc_link import GrpcPlatformLink, platform_certificate_check
from party_bank.node import BankNode
from party_bank.readiness import Readiness
from party_bank.score_files import read_ids
from party_common.cli_format import DefaultsFormatter, config_help, resolve_config, version_string
from party_common.config import ConfigError, NodeConfig, load_config
from party_common.grpc_errors import rpc_error_line
from party_common.jobs.align_incremental import describe as describe_incremental
from party_common.runtime import (
    INSECURE_WARNING,
    TlsFiles,
    check_insecure_dev,
    read_tls_files,
    serve_with_metrics,
    setup_logging,
    start_node_server,
)
from party_common.state_lock import StateLock, under_state_lock
from party_common.transport import TransportError, dial
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.errors import FedProfileError, PeerError, UserError
from protocols.vfl_lr import TrainParams

log = logging.getLogger("party_bank")


def build_server(config_path: str, *, insecure_dev: bool = False) -> tuple[grpc.Server, HealthServicer, BankNode, int]:
    """Load config and data, connect the platform link, start the control API; return (server, health, node, port)."""
    config = load_config(config_path, expected_role="bank", require_tls=not insecure_dev)
    tls = None if insecure_dev else read_tls_files(config)
    # before anything reads or resumes its jobs
    return under_state_lock(config.state_dir, "bank node", lambda lock: _build_server(config, tls, insecure_dev, lock))


def _build_server(config: NodeConfig, tls: TlsFiles | None, insecure_dev: bool,
                  state_lock: StateLock) -> tuple[grpc.Server, HealthServicer, BankNode, int]:
    channel = dial(config.peer_address, cert=tls.cert if tls else None, key=tls.key if tls else None,
                   server_ca=tls.peer_ca if tls else None, tls_name=config.peer_tls_name, insecure=insecure_dev)
    link = GrpcPlatformLink(channel, node_name=config.name, address=config.peer_address,
                            step_timeout_s=config.step_timeout_s, max_payload_bytes=config.max_payload_mb * 2**20,
                            own_cert=tls.cert if tls else None,
                            server_check=None if insecure_dev else platform_certificate_check(config))
    node = BankNode(config, link)
    node.state_lock = state_lock

    def add_services(server: grpc.Server) -> None:
        pb_grpc.add_BankControlServicer_to_server(ControlServicer(node), server)
        add_scoring_service(server, node)  # the v2 application API (docs/api.md), same port, same gate

    server, health, port = start_node_server(
        config, add_services, ["fedprofile.v1.BankControl", SCORING_SERVICE], tls=tls, client_ca=tls.client_ca if tls else None, audit=node.stores.jobs)
    return server, health, node, port


def serve(args: argparse.Namespace) -> int:
    if args.insecure_dev:
        print(INSECURE_WARNING, file=sys.stderr)
    try:
        server, health, node, port = build_server(args.config, insecure_dev=args.insecure_dev)
    except FedProfileError as err:
        print(f"bank-node: {err}", file=sys.stderr)
        return 2
    log.info("bank node '%s': control API on port %d (clients dial %s); platform peer at %s", node.config.name,
             port, node.config.client_address, node.config.peer_address)

    def connect() -> None:
        try:
            node.connect(timeout_s=args.peer_wait)
        except PeerError as err:
            # Not fatal: the platform may come up later; every job checks the peer again before it starts.
            log.warning("%s", err)

    # Readiness for a load balancer (party_bank/readiness.py): the health service's "" and v2 names follow the platform.
    readiness = Readiness(health, node.link.handshake, ready_on_fallback=args.ready_on_fallback).start()

    def stop() -> None:
        readiness.stop()
        node.shutdown()

    return serve_with_metrics("bank-node", server, health, stop, metrics_listen=node.config.metrics_listen,
                              jobs=node.stores.jobs, ready=connect)


def client_for(config: NodeConfig, args: argparse.Namespace) -> BankClient:
    if args.insecure_dev:
        check_insecure_dev(config)
        return BankClient(config.client_address, cert=None, key=None, ca=None, insecure=True)
    cert, key = cli_files.operator_credentials(config, args)
    assert config.tls is not None
    return BankClient(config.client_address, cert=cert, key=key, ca=config.tls.client_ca,
                      tls_name=config.client_tls_name)


def print_job(job: dict) -> None:
    print(json.dumps(job, indent=2, sort_keys=True))


def train_params(args: argparse.Namespace) -> dict[str, Any]:
    """--params merged with the named flags; an unknown key is refused here, with the valid ones."""
    try:
        train = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as err:
        raise UserError(f"--params is not valid JSON: {err}") from None
    if not isinstance(train, dict):
        raise UserError('--params must be a JSON object, e.g. \'{"learning_rate": 0.1}\'')
    valid = sorted(TrainParams.__dataclass_fields__)
    for key in train:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"--params: unknown training parameter {key!r}{hint}; valid: {', '.join(valid)}")
    for key in ("epochs", "batch_size", "learning_rate", "seed", "features", "bins"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    return train


def follow(client: BankClient, job_id: str, *, every_event: bool) -> dict[str, Any]:
    """Wait for a job, printing its history as it happens to stderr: per-epoch validation metrics always,
    every stage with ``every_event``; each line with the time since the job began and what is left."""
    created = client.job(job_id)["created_at"]
    last_event = [""]

    def on_progress(job: dict[str, Any]) -> None:
        stage = (job.get("progress") or "").split(";")[0]
        if every_event and stage != last_event[0]:  # not the stage an event line just showed
            print(views.follow_line(job), file=sys.stderr, flush=True)

    def on_event(event: dict[str, str]) -> None:
        detail = event.get("detail") or ""
        last_event[0] = detail.split(";")[0]
        noteworthy = any(word in detail for word in ("validation", "waiting", "retry", "resumed"))
        if every_event or noteworthy or event["event"] not in ("progress", "created"):
            elapsed = views.duration(views.seconds_between(created, event["at"]))  # both by the node's clock
            print(f"[{elapsed}] {views.event_line(event)[21:]}", file=sys.stderr, flush=True)

    try:
        return client.wait(job_id, on_progress=on_progress, on_event=on_event)
    except KeyboardInterrupt:
        raise FedProfileError(f"stopped following job {job_id}; it keeps running on the node "
                               f"(`bank-node wait {job_id}` follows it again)") from None



def print_outcome(job: dict[str, Any], as_json: bool, config: str | None = None, top: int = 20) -> None:
    if as_json:
        print_job(job)
    elif job["kind"] == "train":
        print(views.train_done(job, config))
    elif job["kind"] == "screen":
        print(cli_screen.iv_table(job, top))
    else:
        result = job.get("result") or {}
        print(f"{job['kind']} job {job['job_id']} succeeded in {views.duration(job.get('elapsed_s') or 0.0)}: "
              f"{views.headline(job)}" + (f"; alignment hash {result['content_hash'][:12]}"
                                          if result.get("content_hash") else "")
              + (f"; {views.memory_text(result)}" if views.memory_text(result) else ""))
        if result.get("incremental"):
            print(describe_incremental(result))


def submit_and_wait(client: BankClient, args: argparse.Namespace, kind: str, params: dict[str, Any],
                    name: str) -> None:
    job_id = client.submit(kind, params, name)
    job = client.job(job_id)
    where = ""
    if kind == "train":
        chosen = job["params"].get("alignment_job_id")
        where = (f" on alignment {chosen}" + ("" if params.get("alignment_job_id")
                                              else " (the latest that can train: mode 'both')"))
    print(f"{kind} job {job_id}{where} submitted", file=sys.stderr)
    if getattr(args, "detach", False):
        print(job_id)
        print(f"follow it with: bank-node wait {views.config_flag(args.config)} {job_id}", file=sys.stderr)
        return
    print_outcome(follow(client, job_id, every_event=getattr(args, "follow", False)), args.json, args.config,
                  getattr(args, "top", 20))


def run_client(args: argparse.Namespace) -> int:
    config = load_config(args.config, expected_role="bank", require_tls=not args.insecure_dev)
    if args.command == "fetch":
        try:
            return cli_files.fetch(config, args)
        except FedProfileError as err:
            print(f"bank-node fetch: {err}", file=sys.stderr)
            return 1
    client = client_for(config, args)
    since = time.time()
    try:
        if args.command == "status":
            try:
                client.wait_ready(timeout_s=args.wait)
            except TransportError as err:
                if err.rpc_error is not None:  # worded as every other command's failure, below
                    raise err.rpc_error from None
                raise PeerError(f"the bank node at {client.address}: {err}") from None
            status = client.node_status()
            while not status["platform_reachable"] and time.time() < since + args.wait:  # it may be starting too
                time.sleep(1.0)
                status = client.node_status()
            print(f"the bank node '{status['node_name']}' at {client.address} is serving "
                  f"({status['jobs_running']} job(s) queued, waiting or running)")
            if status["platform_reachable"]:
                print(f"the platform '{status['platform_name']}' at {status['platform_address']} is reachable")
            else:
                print(f"the platform at {status['platform_address']} is NOT reachable: {status['platform_detail']}; "
                      "jobs wait for it ([peer] retry_deadline_s) and scoring fails unless --bank-only-fallback")
                return 3
        elif args.command == "align":
            submit_and_wait(client, args, "align", {"mode": args.mode, **({"protocol": args.protocol} if args.protocol else {}),
                                                    **({"incremental": True} if args.incremental else {}),
                                                    **({"new_key": True} if args.new_key else {})},
                            args.name or "")
        elif args.command == "train":
            params: dict[str, Any] = {"train": train_params(args)}
            if args.tags:
                params["tags"] = args.tags.split(",")
            if args.alignment:
                params["alignment_job_id"] = args.alignment
            params.update(cli_screen.selection_params(args))
            submit_and_wait(client, args, "train", params, args.name or "")
        elif args.command in cli_screen.COMMANDS:
            submit_and_wait(client, args, "screen", cli_screen.screen_params(args), args.name or "")
        elif args.command == "rerun":
            old = client.job(args.job_id)
            params = dict(old["params"])
            if old["kind"] == "train" and args.latest_alignment:
                params.pop("alignment_job_id", None)
            submit_and_wait(client, args, old["kind"], params, args.name or old["name"])
        elif args.command == "wait":
            print_outcome(follow(client, args.job_id, every_event=True), args.json, args.config)
        elif args.command == "logs":
            events, _ = client.events(args.job_id)
            error = client.job(args.job_id).get("error") or ""  # why it failed, when it did
            print(json.dumps(events, indent=2) if args.json else views.events_text(events, error))
        elif args.command == "jobs":
            jobs = client.jobs(args.limit, brief=not args.json)  # the table shows only the headline
            if args.ids_only:
                print("\n".join(j["job_id"] for j in jobs))
            else:
                print(json.dumps(jobs, indent=2, sort_keys=True) if args.json else views.jobs_table(jobs, args.config))
        elif args.command == "job":
            print_job(client.job(args.job_id))
        elif args.command == "cancel":
            print(views.cancelled_line(client.cancel(args.job_id)))
        elif args.command == "score":
            ids = args.ids.split(",")
            scores = client.score(args.model, ids, args.tags.split(",") if args.tags else None,
                                  bank_only_fallback=args.bank_only_fallback)
            if args.json:
                print(json.dumps([{"id": cid, "status": scores.status[i],
                                   **{t: (None if p != p else p) for t, p in
                                      zip(scores.tags, scores.probabilities[i].tolist(), strict=True)}}
                                  for i, cid in enumerate(ids)], indent=2))
            else:
                print(views.scores_table(ids, scores))
            if scores.note:
                print(f"note: {scores.note}", file=sys.stderr)
            if scores.projections_limit:
                print(f"platform disclosure budget per customer: at most {scores.projections_released} of "
                      f"{scores.projections_limit} projections used", file=sys.stderr)
        elif args.command == "batch-score":
            ids = read_ids(Path(args.ids_file), config.data.id_column) if args.ids_file else None
            result = client.score_file(args.model, args.out, args.tags.split(",") if args.tags else None,
                                       all_customers=args.all_customers, ids=ids, overwrite=args.overwrite)
            print(f"wrote {result.rows} rows to {result.path} on the bank node "
                  f"({result.platform_known} with the platform's part)")
            if result.unknown:
                print(f"{result.unknown} ID(s) are not customers of the bank: status 'unknown_customer'",
                      file=sys.stderr)
        elif args.command == "report":
            out = Path(args.out)
            if out.exists() and not args.overwrite:
                raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
            html = client.report_html(args.job_id)
            out.write_bytes(html)
            print(f"wrote the report of {args.job_id} to {out} ({len(html)} bytes)")
        elif args.command in cli_segments.COMMANDS:
            cli_segments.run(client, args, config)
        elif args.command in cli_stability.COMMANDS:
            cli_stability.run(client, args)
        elif args.command == "models":
            print(cli_models.models_command(client, args.action, args.operands, as_json=args.json))
    except grpc.RpcError as err:
        # Which side refused which certificate (the node's gate or TLS layer, or this client), or why unreachable.
        line = rpc_error_line(err, server="the bank node", address=client.address, own_cert=client.own_cert,
                              since=since, name_key="[client] tls_name")
        print(f"bank-node {args.command}: {line}", file=sys.stderr)
        return 1
    except JobFailed as err:
        print(f"bank-node {args.command}: {err}", file=sys.stderr)
        print(f"its history: bank-node logs --config {args.config} {err.job['job_id']}", file=sys.stderr)
        return 1
    except Exception as err:  # JobFailed, TimeoutError: print the reason, not a trace
        print(f"bank-node {args.command}: {err}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bank-node", description="The bank's node and its client.",
                                     formatter_class=DefaultsFormatter)
    parser.add_argument("--version", action="version", version=version_string("bank-node"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=DefaultsFormatter)
        p.add_argument("--config", help=config_help("bank"))
        p.add_argument("--insecure-dev", action="store_true", help="plaintext gRPC, no client auth (laptop only)")
        if name != "serve":
            p.add_argument("--cert", help="your operator certificate (default: operators/$USER.crt in the folder "
                           "of the node's certificate)")
            p.add_argument("--key", help="its private key (default: the --cert path with .key)")
        return p

    def add_job_output(p: argparse.ArgumentParser, *, submit: bool = True) -> None:
        p.add_argument("--json", action="store_true", help="print the finished job as JSON instead of a summary")
        if submit:
            p.add_argument("--name", help="a name for the job (train: the model's name in `bank-node models`)")
            how = p.add_mutually_exclusive_group()
            how.add_argument("--follow", action="store_true", help="print every stage as it happens (default: "
                             "per-epoch validation metrics only)")
            how.add_argument("--detach", action="store_true", help="submit, print the job ID and return; "
                             "`bank-node wait JOB` follows it later")

    s = add("serve", "run the node")
    s.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="the node's log level")
    s.add_argument("--peer-wait", type=float, default=30.0, help="seconds to wait for the platform at start")
    s.add_argument("--ready-on-fallback", action="store_true",
                   help="health says SERVING while the platform is unreachable too (the applications behind the load "
                        "balancer score with bank_only_fallback); otherwise NOT_SERVING until it answers")
    st = add("status", "check that the bank node answers (waiting for it to start, up to --wait seconds)")
    st.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the node (and its platform) to "
                    "come up; exit code 3 when the platform is still unreachable")
    a = add("align", "run PSI with the platform")
    a.add_argument("--mode", default="both", choices=["both", "bank_only", "cardinality"],
                   help="who learns the intersection: both nodes (needed to train), the bank only, or its size only")
    a.add_argument("--protocol", choices=["ot", "ecdh"], help="PSI protocol (default: 'ot' for modes both and "
                   "bank_only, 'ecdh' for cardinality; see docs/psi.md)")
    a.add_argument("--incremental", action="store_true", help="keep the pair's key epoch and blinded sets so the "
                   "next alignment sends only new and removed IDs (ECDH; docs/psi.md, 'Incremental alignment')")
    a.add_argument("--new-key", action="store_true", help="with --incremental: start a new key epoch now (full run)")
    add_job_output(a)
    defaults = TrainParams()
    t = add("train", "train one model per tag on the latest alignment that can train (or --alignment)")
    t.add_argument("--tags", help="comma-separated tag columns (default: all of [data] tag_columns)")
    t.add_argument("--alignment", help="align job ID (default: the latest finished align job in mode 'both')")
    t.add_argument("--epochs", type=int, help="passes over the data (default: automatic, at most 10, "
                   "from the label-privacy floor)")
    t.add_argument("--batch-size", type=int, help="rows per mini-batch (default: automatic)")
    t.add_argument("--learning-rate", type=float, help=f"step size (default: {defaults.learning_rate})")
    t.add_argument("--seed", type=int, help=f"seed of the split and the batches (default: {defaults.seed})")
    t.add_argument("--features", choices=["raw", "binned"], help="train on each party's raw columns or on their "
                   f"one-hot bins, each node binning its own by its [binning] table (default: {defaults.features})")
    t.add_argument("--bins", choices=["auto", "configured"], help="with --features binned: 'auto' lets the platform "
                   "bin more coarsely, or keep its raw columns, when its bins are too many for the batch floor on the "
                   f"labelled rows per tag; 'configured' bins as each [binning] table says (default: {defaults.bins})")
    t.add_argument("--params", metavar="JSON", help="training parameters as a JSON object (default: {}); "
                   f"valid keys: {', '.join(sorted(TrainParams.__dataclass_fields__))}; defaults in "
                   "protocols/vfl_lr/params.py and docs/protocol.md")
    cli_screen.add_selection_flags(t)
    add_job_output(t)
    r = add("rerun", "submit a job again with the same parameters (and wait for it, as train does)")
    r.add_argument("job_id", help="the job to run again")
    r.add_argument("--latest-alignment", action="store_true",
                   help="train: on the latest alignment that can train instead of the original one")
    add_job_output(r)
    w = add("wait", "follow a running job: stages, per-epoch validation metrics, elapsed time and time left")
    w.add_argument("job_id", help="the job to follow")
    add_job_output(w, submit=False)
    lg = add("logs", "a job's history: created, each stage with its time, per-epoch validation metrics, the end")
    lg.add_argument("job_id", help="the job")
    lg.add_argument("--json", action="store_true", help="print the events as JSON")
    j = add("jobs", "list jobs, newest first: name, status, duration, tags, headline metric")
    j.add_argument("--limit", type=int, default=20, help="how many jobs")
    shown = j.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print JSON")
    shown.add_argument("--ids-only", action="store_true", help="print only the job IDs, one a line (for scripts)")
    add("job", "show one job as JSON (parameters, result, progress)").add_argument("job_id", help="the job")
    add("cancel", "stop a job on both nodes (status 'cancelled' on both)").add_argument("job_id", help="the job")
    sc = add("score", "score customers online")
    sc.add_argument("--model", required=True, help="the train job ID, an alias NAME@LABEL, or 'latest'")
    sc.add_argument("--ids", required=True, help="comma-separated customer IDs (an unknown ID gets status "
                    "unknown_customer and fails nothing)")
    sc.add_argument("--tags", help="comma-separated tags (default: all of the model's)")
    sc.add_argument("--bank-only-fallback", action="store_true", help="if the platform is unreachable, score "
                    "its customers on the bank's features alone, with status platform_unavailable")
    sc.add_argument("--json", action="store_true", help="print JSON")
    b = add("batch-score", "score the intersection, every customer, or a list of IDs into a file on the node")
    b.add_argument("--model", required=True, help="the train job ID, an alias NAME@LABEL, or 'latest'")
    b.add_argument("--out", required=True, help="output .csv or .parquet, relative to <state_dir>/scores/ "
                   "on the bank node (absolute paths and '..' are refused)")
    who = b.add_mutually_exclusive_group()
    who.add_argument("--all-customers", action="store_true", help="score every bank customer; those outside "
                     "the intersection are scored on the bank's features alone (platform_known=false)")
    who.add_argument("--ids-file", help="CSV/Parquet on this machine with the bank's ID column (or one "
                     "column): score those customers; an unknown ID gets status unknown_customer")
    b.add_argument("--tags", help="comma-separated tags (default: all of the model's)")
    b.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    cli_files.add_parsers(add)
    preflight.add_parser(add)
    cli_segments.add_parsers(add)
    cli_stability.add_parsers(add)
    cli_screen.add_parsers(add, add_job_output)
    rep = add("report", "fetch a train job's report as one self-contained HTML page (plots, intervals, privacy)")
    rep.add_argument("job_id", help="the train job ID")
    rep.add_argument("--out", required=True, help="HTML file to write on this machine")
    rep.add_argument("--overwrite", action="store_true", help="replace the file if it exists")
    mo = add("models", "the model registry: list models; alias NAME@LABEL MODEL; unalias ALIAS; retire MODEL")
    mo.add_argument("action", nargs="?", default="list", choices=list(cli_models.ACTIONS), help="what to do")
    mo.add_argument("operands", nargs="*", help="NAME@LABEL MODEL (alias), ALIAS (unalias), MODEL (retire)")
    mo.add_argument("--json", action="store_true", help="print JSON")
    co = add("console", "a web console on 127.0.0.1 for this node (jobs, reports, models, segments, scoring), "
             "calling it with your operator certificate as these commands do; it prints the link to open")
    co.add_argument("--port", type=int, default=8080, help="local port of the console (0: any free one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config = resolve_config(args.config, "bank", "bank-node")
    if args.command == "serve":
        setup_logging(args.log_level)
        return serve(args)
    if args.command == "preflight":
        return preflight.run(args)
    if args.command == "console":
        try:
            from party_bank.console import run_console  # starlette and its pages: only for this command

            return run_console(args, client_for)
        except ConfigError as err:
            print(f"bank-node: {err}", file=sys.stderr)
            return 2
    try:
        return run_client(args)
    except ConfigError as err:
        print(f"bank-node: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
