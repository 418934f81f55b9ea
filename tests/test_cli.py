"""`bank-node` for people: help with defaults, --version, tables that never cut a tag, one-line errors, ETA."""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from party_bank import views
from party_bank.cli import build_parser, main, train_params
from party_bank.scores import Scores
from party_common.certs import init_local_pki
from party_common.grpc_errors import peer_error, rpc_error_line
from party_common.progress import ProgressLog, epoch_fraction
from party_common.transport import add_health, bind, dial, make_server, server_credentials
from party_platform.cli import main as platform_main
from protocols.errors import UserError
from tests.test_certs import FakeRpcError

LONG_TAG = "tag_" + "very_long_tag_name_for_a_campaign_" * 3 + "end"


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_has_help_that_shows_its_default() -> None:
    for name, sub in subparsers(build_parser()).items():
        text = sub.format_help()
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            helped = sub._get_formatter()._get_help_string(action) % {"default": action.default}  # type: ignore[attr-defined]
            assert action.required or "default" in helped, f"{name} {action.option_strings[0]}: {helped}"
        assert "--config" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    for entry, prog in ((main, "bank-node"), (platform_main, "platform-node")):
        with pytest.raises(SystemExit) as done:
            entry(["--version"])
        assert done.value.code == 0 and capsys.readouterr().out.startswith(f"{prog} ")


def test_unknown_params_keys_are_listed_with_the_valid_ones() -> None:
    args = build_parser().parse_args(["train", "--config", "b.toml", "--params", '{"lr": 0.1}', "--epochs", "3"])
    with pytest.raises(UserError, match=r"unknown training parameter 'lr'; valid: batch_size, .*learning_rate"):
        train_params(args)
    args = build_parser().parse_args(["train", "--config", "b.toml", "--params", '{"learning_rat": 0.1}'])
    with pytest.raises(UserError, match="did you mean 'learning_rate'"):
        train_params(args)
    ok = build_parser().parse_args(["train", "--config", "b.toml", "--params", '{"l2": 0.5}', "--epochs", "3"])
    assert train_params(ok) == {"l2": 0.5, "epochs": 3}


def job(kind: str, **kw: object) -> dict[str, object]:
    base = {"job_id": f"{kind}-20260101-000000-abcdef", "kind": kind, "name": "", "status": "succeeded",
            "params": {}, "result": {}, "error": "", "progress": "", "created_at": "2026-01-01T00:00:00+00:00",
            "finished_at": "2026-01-01T00:02:05+00:00", "elapsed_s": 125.0}
    return {**base, **kw}


def summary(tag: str) -> dict[str, object]:
    return {"confidence": 0.95, "has_predictions": True, "tags": {tag: {
        "auc": {"joint": 0.81, "bank_only": 0.74}, "uplift": 0.07, "n": 400, "positives": 80,
        "intervals": {"joint": {"auc": [0.76, 0.86]}, "bank_only": {"auc": [0.69, 0.79]}, "uplift": [0.01, 0.13]},
        "warnings": [{"code": "x", "message": "read me"}]}}}


def test_jobs_table_has_a_header_and_never_cuts_a_tag_name() -> None:
    assert "no jobs" in views.jobs_table([])
    trained = job("train", name="cars", params={"tags": [LONG_TAG]}, result={"summary": summary(LONG_TAG)})
    failed = job("align", status="failed", error="the platform node at 10.0.0.9:7444 is unreachable\nmore")
    text = views.jobs_table([trained, failed])
    lines = text.splitlines()
    assert lines[0].split() == ["JOB", "NAME", "KIND", "STATUS", "DURATION", "TAGS", "RESULT", "CREATED", "(UTC)"]
    assert LONG_TAG in lines[2] and "2 min 05 s" in lines[2] and "AUC 0.810 (+0.070 vs bank-only)" in lines[2]
    assert "cars" in lines[2] and "unreachable" in lines[3] and "more" not in text


def test_train_ends_with_the_summary_table() -> None:
    done = job("train", name="cars", result={"summary": summary(LONG_TAG), "alignment_job_id": "align-1",
                                             "rows": 400, "metrics": {LONG_TAG: {"served": {"model": "bank_only"}}}})
    text = views.train_done(done)
    assert "trained on alignment align-1 (400 shared customers) in 2 min 05 s" in text
    row = next(line for line in text.splitlines() if line.startswith(LONG_TAG))
    assert row.split()[1:] == ["0.810", "[0.760,", "0.860]", "0.740", "[0.690,", "0.790]", "+0.070", "[+0.010,",
                               "+0.130]", "80", "of", "400", "bank-only"]
    assert f"! {LONG_TAG}: read me" in text
    assert f"SERVED bank-only: {LONG_TAG} scored by the bank's own model" in text
    assert "peak memory" not in text  # a job stored before jobs reported memory
    done["result"]["memory"] = {"node_peak_mb": 1234.5, "node_peak_resident_mb": 2000.0, "workers_peak_mb": 980.2}
    assert "400 shared customers) in 2 min 05 s; peak memory 1,234 MB, workers 980 MB" in views.train_done(done)


def test_score_table_keeps_every_id_with_its_status() -> None:
    scores = Scores([LONG_TAG], np.array([[0.25], [np.nan]]), np.array([True, False]), 1, 6,
                    status=["ok", "unknown_customer"])
    lines = views.scores_table(["+44 1", "+44 2"], scores).splitlines()
    assert LONG_TAG in lines[0] and lines[2].split() == ["+44", "1", "ok", "0.2500"]
    assert lines[3].split() == ["+44", "2", "unknown_customer", "-"]


def test_logs_list_the_history_and_count_the_score_calls() -> None:
    events = [{"at": "2026-01-01T00:00:00+00:00", "event": "created", "detail": "train"},
              {"at": "2026-01-01T00:00:09+00:00", "event": "progress", "detail": "epoch 1/2 validation AUC t 0.7"},
              *({"at": f"2026-01-01T00:01:0{i}+00:00", "event": "score", "detail": "1 rows"} for i in range(3))]
    assert views.events_text(events).splitlines() == [
        "2026-01-01 00:00:00  created: train", "2026-01-01 00:00:09  epoch 1/2 validation AUC t 0.7",
        "(and 3 online score call(s) with this model, the last at 2026-01-01 00:01:02)"]
    assert views.events_text([]) == "no events"
    failed = [{"at": "2026-01-01T00:00:00+00:00", "event": "created", "detail": "align"},
              {"at": "2026-01-01T00:00:05+00:00", "event": "failed", "detail": ""}]
    assert views.events_text(failed, "the platform refused: [policy] min_intersection 100\nmore").splitlines()[-1] \
        == "2026-01-01 00:00:05  failed: the platform refused: [policy] min_intersection 100"


def test_jobs_keeps_text_in_square_brackets() -> None:
    failed = job("align", status="failed", error="refused by [policy] allowed_tags [tag_x]", name="[draft]")
    text = views.jobs_table([failed])
    assert "refused by [policy] allowed_tags [tag_x]" in text and "[draft]" in text


def test_progress_says_what_is_left_and_keeps_each_stage() -> None:
    now = [0.0]
    rows: list[str] = []
    events: list[str] = []
    log = ProgressLog(rows.append, events.append, every_s=0.0, clock=lambda: now[0])
    log("keys", 0, 1)
    assert rows[-1] == "keys" and events == ["keys"]
    log("epoch 1/4 (masks ahead of time)", 1, 2)
    now[0] = 30.0
    log("epoch 1/4", 5, 10)  # 1/8 of the training after 30 s: 210 s left
    assert rows[-1] == "epoch 1/4: batch 5 of 10; about 3 min 30 s left"
    now[0] = 60.0
    log("epoch 1/4 validation AUC tag_a 0.812", 1, 1)
    assert events[-1] == "epoch 1/4 validation AUC tag_a 0.812; about 3 min 00 s left"
    log("epoch 1/4 validation AUC tag_a 0.812", 1, 1)
    assert len(events) == 4  # a stage is one event, however often it reports
    assert epoch_fraction("psi: bank points", 1, 2) is None and epoch_fraction("epoch 4/4", 10, 10) == 1.0


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict[str, Path], int]:
    pki = init_local_pki(tmp_path_factory.mktemp("pki"), operators=["alice"])
    other = init_local_pki(tmp_path_factory.mktemp("other"), operators=["mallory"])
    server = make_server(2)
    add_health(server, [])
    port = bind(server, "0.0.0.0:0", server_credentials(pki["bank_cert"].read_bytes(), pki["bank_key"].read_bytes(),
                                                        pki["bank_ca"].read_bytes()))
    server.start()
    yield pki, other, port
    server.stop(0)


def call(address: str, cert: Path, key: Path, ca: Path, tls_name: str | None = None) -> grpc.RpcError:
    channel = dial(address, cert=cert.read_bytes(), key=key.read_bytes(), server_ca=ca.read_bytes(),
                   tls_name=tls_name)
    try:
        with pytest.raises(grpc.RpcError) as failed:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return failed.value
    finally:
        channel.close()


def test_transport_failures_read_as_one_plain_line(serving: tuple[dict[str, Path], dict[str, Path], int]) -> None:
    pki, other, port = serving
    good = (pki["operator_cert"], pki["operator_key"], pki["bank_ca"])
    at = f"127.0.0.1:{port}"
    line = rpc_error_line(call(f"0.0.0.0:{port}", *good), server="the bank node", address=f"0.0.0.0:{port}",
                          name_key="[client] tls_name")
    assert line == (f"TLS with the bank node at 0.0.0.0:{port} failed: we refused the bank node's certificate: it "
                    "does not carry the name we check (set [client] tls_name to a name in that certificate)")
    line = rpc_error_line(call(at, other["operator_cert"], other["operator_key"], pki["bank_ca"]),
                          server="the bank node", address=at)
    assert line == (f"certificate refused by the bank node at {at} in the TLS handshake (not signed by a CA it "
                    "trusts, or outside its validity period: it closed the connection without saying which)")
    line = rpc_error_line(call(at, *good[:2], other["bank_ca"]), server="the bank node", address=at)
    assert line == (f"TLS with the bank node at {at} failed: we refused the bank node's certificate: it is not "
                    "signed by the CA we trust")
    refused = call("127.0.0.1:1", *good)
    line = rpc_error_line(refused, server="the bank node", address="127.0.0.1:1", since=0.0)
    assert line == ("the bank node at 127.0.0.1:1 is unreachable since 00:00:00 UTC: connection refused (is the "
                    "node running, on that port?)")
    assert "\n" not in str(peer_error(refused, "handshake", address="127.0.0.1:1"))


Answer = FakeRpcError  # a status a server set on purpose


def test_a_servers_own_message_is_passed_on_as_it_is() -> None:
    told = Answer(grpc.StatusCode.UNAVAILABLE, "partial scores: the platform node at 10.0.0.9:7444 is unreachable "
                  "since 09:00:00 UTC: connection refused (is the node running, on that port?)")
    assert rpc_error_line(told, server="the bank node", address="b:1") == told.details()
    missing = Answer(grpc.StatusCode.NOT_FOUND, "no job train-1")
    assert rpc_error_line(missing, server="the bank node", address="b:1") == "no job train-1"
    slow = Answer(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert rpc_error_line(slow, server="the bank node", address="b:1", timeout_s=30) == \
        "the bank node at b:1 did not answer within 30 s"


def test_client_commands_fail_in_one_line_when_the_node_is_down(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from simulations.cluster import free_port, write_configs

    init_local_pki(tmp_path / "certs", operators=[getpass.getuser()])
    (tmp_path / "b.csv").write_text("id,x,tag\n1,0.5,1\n")
    bank, _ = write_configs(tmp_path, bank_data=tmp_path / "b.csv", bank_id_column="id", bank_tag_columns=["tag"],
                            platform_data=tmp_path / "b.csv", platform_id_column="id", bank_port=free_port(),
                            platform_port=free_port())
    assert main(["jobs", "--config", str(bank)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bank-node jobs: the bank node at 127.0.0.1:") and "connection refused" in err
    assert len(err.splitlines()) == 1
    assert main(["status", "--config", str(bank)]) == 1  # the same words when waiting for the node
    err = capsys.readouterr().err.strip()
    assert err.startswith("bank-node status: the bank node at 127.0.0.1:") and " is unreachable since " in err
    assert err.endswith("connection refused (is the node running, on that port?)")


def test_segment_commands_read_shares_and_print_results_for_people() -> None:
    from party_bank.cli_segments import describe_result, share
    assert share("10%") == pytest.approx(0.1) and share("0.25") == 0.25
    for bad in ("0", "150%", "ten"):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
            share(bad)
    result = {"segment": "s1", "tag": "t", "model": "train-1", "source": "o.csv", "not_in_segment": 3,
              "groups": {"target": {"responders": 30, "with_outcome": 100, "members": 110},
                         "control": {"responders": 0, "with_outcome": 0, "members": 12}},
              "absolute_lift": 0.1, "absolute_lift_ci95": [0.02, 0.18], "relative_lift": None,
              "relative_lift_ci95": None}
    assert describe_result(result).splitlines() == [
        "segment s1 (t, model train-1), outcomes from o.csv",
        "  target        30 of     100 responded (30.0%); 10 member(s) without an outcome",
        "  control        0 of       0 responded (n/a); 12 member(s) without an outcome",
        "  absolute lift +10.0 percentage points (95% CI +2.0 to +18.0; normal approximation)",
        "  relative lift n/a",
        "  3 outcome row(s) for customers in neither group: ignored"]
    args = build_parser().parse_args(["segment", "--config", "b.toml", "--model", "m", "--tag", "t", "--top", "5%",
                                      "--control", "0.1", "--out", "s"])
    assert (args.top, args.control, args.format) == (0.05, 0.1, "parquet")
