"""The v2 application API (fedprofile.v2.Scoring, docs/api.md) against two real nodes over mutual TLS, from
Python and from the Node.js example (clients/node/score.js with @grpc/grpc-js), plus its published schemas."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from party_bank import api_schemas
from party_bank.client import BankClient
from party_bank.client_v2 import ScoringClient
from party_bank.readiness import Readiness
from party_common.auth import ROLE_NODE
from party_common.certs import OrgFolder
from party_common.grpc_errors import rpc_error_line
from party_common.transport import add_health, dial
from proto import fedprofile_v2_pb2 as pb
from proto import fedprofile_v2_pb2_grpc as pb_grpc
from protocols.errors import PeerError
from protocols.vfl_lr import TrainParams
from simulations.cluster import OPERATOR, LocalCluster
from tests.nodes_fixture import FAST_TRAIN, simulated_files

NODE_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"


@dataclass
class Api:
    cluster: LocalCluster
    v1: BankClient
    v2: ScoringClient
    model: str
    shared: list[str]
    bank_only: list[str]  # bank customers the platform does not share


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    work = tmp_path_factory.mktemp("apiv2")
    files = simulated_files(work / "data")
    with LocalCluster(work / "cluster", bank_data=files.bank, bank_id_column="id", bank_tag_columns=files.tags,
                      platform_data=files.platform, platform_id_column="id", workers=1) as cluster:
        certs = cluster.certs
        v2 = ScoringClient(f"127.0.0.1:{cluster.bank_port}", cert=certs[f"operator_cert:{OPERATOR}"],
                           key=certs[f"operator_key:{OPERATOR}"], ca=certs["bank_ca"])
        align = v2.wait(v2.submit(pb.ALIGN, {"mode": "both"}, name="v2-align").job_id, timeout_s=300)
        train = v2.wait(v2.submit(pb.TRAIN, {"alignment_job_id": align.job_id, "train": FAST_TRAIN}).job_id,
                        timeout_s=600)
        v1 = cluster.bank_client()
        v1.set_alias("tags@prod", train.job_id)
        import pandas as pd
        bank_ids = [str(i) for i in pd.read_csv(files.bank, dtype={"id": str})["id"]]
        shared = sorted(files.shared_ids)
        yield Api(cluster, v1, v2, train.job_id, shared, sorted(set(bank_ids) - files.shared_ids))
        v2.close()


def test_v2_score_equals_v1_digit_for_digit(api: Api) -> None:
    ids = [*api.shared[:5], *api.bank_only[:3], "no-such-customer"]
    old = api.v1.score(api.model, ids)
    new = api.v2.score("tags@prod", ids)  # the alias resolves to the same model, and says so
    assert new.model_job_id == api.model and list(new.tags) == old.tags
    assert [m.tag for m in new.models] == old.tags and all(m.served == pb.JOINT for m in new.models)  # serve joint
    assert [r.customer_id for r in new.rows] == ids
    assert [pb.ScoreStatus.Name(r.status).lower() for r in new.rows] == old.status
    got = np.array([list(r.probabilities) for r in new.rows])
    assert np.array_equal(np.isnan(got), np.isnan(old.probabilities))
    assert np.array_equal(np.nan_to_num(got), np.nan_to_num(old.probabilities))  # bit for bit
    assert [r.platform_known for r in new.rows] == old.platform_known.tolist()
    assert api.v2.score("latest", ids[:1]).model_job_id == api.model


@pytest.mark.parametrize(("call", "code", "message"), [
    (lambda c, m: c.score(m, []), grpc.StatusCode.INVALID_ARGUMENT, "names no customer"),
    (lambda c, m: c.score("nobody@prod", ["1"]), grpc.StatusCode.NOT_FOUND, "no model alias 'nobody@prod'"),
    (lambda c, m: c.stub.SubmitJob(pb.SubmitJobRequest(kind=pb.TRAIN, params_json='{"train": {"epochs": "two"}}')),
     grpc.StatusCode.INVALID_ARGUMENT, "params_json: train/epochs: 'two' is not of type 'integer', 'null'"),
    (lambda c, m: c.stub.SubmitJob(pb.SubmitJobRequest(kind=pb.TRAIN, params_json='{"epoch": 2}')),
     grpc.StatusCode.INVALID_ARGUMENT, "Additional properties are not allowed ('epoch' was unexpected)"),
    (lambda c, m: c.stub.GetJob(pb.GetJobRequest(job_id="train-nope")), grpc.StatusCode.NOT_FOUND, ""),
    (lambda c, m: list(c.stub.Download(pb.DownloadRequest(kind=pb.SCORES, name="../jobs.sqlite"))),
     grpc.StatusCode.INVALID_ARGUMENT, "no absolute path, no '..'"),
    (lambda c, m: list(c.stub.Download(pb.DownloadRequest(kind=pb.SEGMENT, name="nope"))),
     grpc.StatusCode.NOT_FOUND, ""),
])
def test_v2_errors_are_the_documented_statuses(api: Api, call, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call(api.v2, api.model)
    assert err.value.code() == code, err.value.details()
    assert message in err.value.details()


def test_the_error_table_lists_every_code_the_proto_names() -> None:
    proto = Path(__file__).resolve().parent.parent / "proto" / "fedprofile_v2.proto"
    table = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    listed = set(re.findall(r"^\s*//\s+([A-Z_]+)[ ,]", proto.read_text(), re.M))  # "//   NOT_FOUND   ..." lines
    named = {c.name for c in grpc.StatusCode} & listed
    assert named and all(f"`{c}`" in table for c in named), named


def test_score_stream_of_a_million_ids_answers_every_row(api: Api) -> None:
    """1,000,000 IDs (shared customers, bank-only ones and unknown IDs, repeated) through ScoreStream: every row
    comes back, in order, with its status; no message-size cliff."""
    pattern = [*api.shared[:6], *api.bank_only[:3], "unknown-1"]
    n = 1_000_000
    started = time.perf_counter()
    rows = statuses = 0
    counts = {s: 0 for s in ("OK", "NOT_IN_INTERSECTION", "UNKNOWN_CUSTOMER")}
    ids = (pattern[i % len(pattern)] for i in range(n))
    for message in api.v2.score_stream("tags@prod", ids):
        assert message.offset == rows and message.ByteSize() < 2 * 2**20
        for r in message.rows:
            counts[pb.ScoreStatus.Name(r.status)] += 1
        statuses += len(message.rows)
        rows += len(message.rows)
    assert rows == n == statuses
    assert counts == {"OK": 600_000, "NOT_IN_INTERSECTION": 300_000, "UNKNOWN_CUSTOMER": 100_000}
    print(f"ScoreStream: {n} IDs in {time.perf_counter() - started:.1f} s")


def test_download_a_batch_score_file_and_a_segment(api: Api, tmp_path: Path) -> None:
    reply = api.v2.batch_score("tags@prod", "v2/all.csv", all_customers=True, overwrite=True)
    assert reply.output_path == "v2/all.csv" and reply.rows == len(api.shared) + len(api.bank_only)
    node_file = api.cluster.workdir / "state" / "bank" / "scores" / "v2" / "all.csv"
    got = api.v2.download(pb.SCORES, reply.output_path, tmp_path / "all.csv")
    assert got.read_bytes() == node_file.read_bytes()
    segment = api.v2.stub.Segment(pb.SegmentRequest(model="tags@prod", tag=api.v1.score(api.model, ["x"]).tags[0],
                                                    top_share=0.2, control_share=0.1, name="v2seg", seed=7,
                                                    format=pb.SegmentRequest.CSV, overwrite=True))
    assert segment.selected == segment.target_size + segment.control_size > 0 and segment.seed == 7
    api_schemas.check("segment", json.loads(segment.segment_json), what="segment")
    groups = api.v2.download(pb.SEGMENT, "v2seg", tmp_path / "groups.csv").read_text().splitlines()
    assert len(groups) == segment.selected + 1  # a header and one row per selected customer


def test_bank_node_fetch_downloads_a_score_file_through_the_cli(api: Api, tmp_path: Path, capsys) -> None:
    """`bank-node fetch` (issue 25): the real CLI, the operator's own certificate, the v2 Download."""
    from party_bank.cli import main

    reply = api.v2.batch_score("tags@prod", "fetch/shared.csv", ids=api.shared[:20], overwrite=True)
    out = tmp_path / "shared.csv"
    args = ["fetch", "scores", reply.output_path, "--out", str(out), "--config", str(api.cluster.bank_config),
            *api.cluster.operator_args]
    assert main(args) == 0 and "SHA-256 checked" in capsys.readouterr().out
    node_file = api.cluster.workdir / "state" / "bank" / "scores" / "fetch" / "shared.csv"
    assert out.read_bytes() == node_file.read_bytes()
    assert main(args) == 1 and "exists; pass --overwrite" in capsys.readouterr().err  # nothing replaced
    assert main(["fetch", "scores", "fetch/none.csv", "--out", str(tmp_path / "none.csv"), "--config",
                 str(api.cluster.bank_config), *api.cluster.operator_args]) == 1
    assert not (tmp_path / "none.csv").exists() and not (tmp_path / "none.csv.part").exists()


def test_published_schemas_are_generated_from_the_code() -> None:
    for name, schema in api_schemas.schemas().items():
        assert api_schemas.published(name) == json.loads(json.dumps(schema)), (
            f"proto/schemas/{name}.schema.json is stale: run `python -m party_bank.api_schemas --write`")
    train = api_schemas.schemas()["train_params"]["properties"]["train"]["properties"]
    assert set(train) == {f.name for f in dataclasses.fields(TrainParams)}


def health(channel: grpc.Channel, service: str) -> str:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_a_load_balancer_probe_reads_health_and_nothing_else(api: Api) -> None:
    """A node certificate issued for the balancer's probe gets health answers, and a refusal for anything else."""
    probe = OrgFolder(api.cluster.certs["bank_dir"]).issue(ROLE_NODE, "lb-probe", days=30, file="lb-probe",
                                                           hosts=["lb-probe"])
    channel = dial(f"127.0.0.1:{api.cluster.bank_port}", cert=probe[0].read_bytes(), key=probe[1].read_bytes(),
                   server_ca=api.cluster.certs["bank_ca"].read_bytes())
    assert health(channel, "") == "SERVING" and health(channel, "fedprofile.v2.Scoring") == "SERVING"
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.ScoringStub(channel).Score(pb.ScoreRequest(params=pb.ScoreParams(model="latest"),
                                                           customer_ids=["1"]), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'lb-probe' (node, bank) is not an operator certificate" in err.value.details()
    channel.close()


def test_readiness_follows_the_platform_or_the_fallback() -> None:
    from concurrent import futures
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = add_health(server, ["fedprofile.v1.BankControl", "fedprofile.v2.Scoring"])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    up = [True]

    def probe() -> None:
        if not up[0]:
            raise PeerError("the platform node at x is unreachable", code="UNAVAILABLE")

    try:
        strict = Readiness(servicer, probe)
        assert health(channel, "") == "NOT_SERVING"  # not asked yet: not ready
        assert strict.check_once() and health(channel, "") == health(channel, "fedprofile.v2.Scoring") == "SERVING"
        up[0] = False
        assert not strict.check_once() and health(channel, "fedprofile.v2.Scoring") == "NOT_SERVING"
        assert health(channel, "fedprofile.v1.BankControl") == "SERVING"  # liveness: the CLI still works
        fallback = Readiness(servicer, probe, ready_on_fallback=True)
        assert fallback.check_once() and health(channel, "") == "SERVING"
        fallback.stop()
        assert health(channel, "") == "NOT_SERVING"
    finally:
        channel.close()
        server.stop(None)


# ---- the handshake ----

def test_grpc_python_cannot_ask_for_an_optional_client_certificate(tmp_path: Path, api: Api) -> None:
    """Why the control port keeps require_client_auth=True (docs/security.md): with False, gRPC Python's server
    does not even request a certificate, so the gate would see no caller's identity at all, operators included."""
    from party_common.transport import make_server
    certs = api.cluster.certs
    seen: list[bool] = []

    class Look(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
            handler = continuation(details)

            def look(request, context):  # type: ignore[no-untyped-def]
                seen.append("x509_pem_cert" in dict(context.auth_context()))
                return handler.unary_unary(request, context)
            return handler._replace(unary_unary=look)

    server = make_server(interceptors=[Look()])
    add_health(server, [])
    creds = grpc.ssl_server_credentials([(certs["bank_key"].read_bytes(), certs["bank_cert"].read_bytes())],
                                        root_certificates=certs["bank_ca"].read_bytes(), require_client_auth=False)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        channel = dial(f"127.0.0.1:{port}", cert=certs[f"operator_cert:{OPERATOR}"].read_bytes(),
                       key=certs[f"operator_key:{OPERATOR}"].read_bytes(), server_ca=certs["bank_ca"].read_bytes())
        assert health(channel, "") == "SERVING"
        assert seen == [False]  # alice presented her certificate; the server never asked for it
        channel.close()
    finally:
        server.stop(None)


def test_a_client_without_a_certificate_gets_a_refusal_and_no_data(api: Api) -> None:
    ca = api.cluster.certs["bank_ca"].read_bytes()
    address = f"127.0.0.1:{api.cluster.bank_port}"
    channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca))
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.ScoringStub(channel).Score(pb.ScoreRequest(params=pb.ScoreParams(model="latest"),
                                                           customer_ids=api.shared[:1]), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    line = rpc_error_line(err.value, server="the bank node", address=address, own_cert=None)
    assert line == (f"certificate refused by the bank node at {address} in the TLS handshake (we presented no "
                    "client certificate)")
    channel.close()


# ---- the Node.js client ----

def node_ready() -> None:
    """Node and the example's two npm packages, installed by `make test` (Makefile: node); here only checked,
    or the packages installed from the registry when node and npm are there but the packages are not."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js example not run: `node`/`npm` are not installed (`make test` installs them with "
                    "apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"Node.js example not run: `npm install` in {NODE_DIR} failed: {done.stderr[-500:]}")


def node_client(api: Api, *args: str, cert: bool = True) -> dict:
    certs = api.cluster.certs
    tls = ["--ca", str(certs["bank_ca"])]
    if cert:
        tls += ["--cert", str(certs[f"operator_cert:{OPERATOR}"]), "--key", str(certs[f"operator_key:{OPERATOR}"])]
    done = subprocess.run(["node", str(NODE_DIR / "score.js"), args[0], "--address",
                           f"localhost:{api.cluster.bank_port}", *tls, *args[1:]],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_node_client_scores_as_the_python_client(api: Api) -> None:
    node_ready()
    ids = [*api.shared[:4], *api.bank_only[:2], "no-such-customer"]
    got = node_client(api, "score", "--model", "tags@prod", "--ids", ",".join(ids))
    want = api.v1.score(api.model, ids)
    assert got["model_job_id"] == api.model and got["tags"] == want.tags
    assert [m["served"] for m in got["models"]] == ["JOINT"] * len(want.tags)
    assert [r["status"].lower() for r in got["rows"]] == want.status
    for row, expected in zip(got["rows"], want.probabilities.tolist(), strict=True):
        for value, exp in zip(row["probabilities"], expected, strict=True):
            assert (math.isnan(float(value)) and math.isnan(exp)) or value == exp  # digit for digit


def test_the_node_client_streams_and_is_refused_without_a_certificate(api: Api, tmp_path: Path) -> None:
    node_ready()
    ids_file = tmp_path / "ids.txt"
    pattern = [*api.shared[:3], *api.bank_only[:1], "unknown-1"]
    ids_file.write_text("\n".join(pattern[i % 5] for i in range(50_000)))
    got = node_client(api, "stream", "--model", "tags@prod", "--ids-file", str(ids_file))
    assert got["rows"] == 50_000 and got["ordered"]
    assert got["statuses"] == {"OK": 30_000, "NOT_IN_INTERSECTION": 10_000, "UNKNOWN_CUSTOMER": 10_000}
    refused = node_client(api, "nocert", cert=False)
    assert refused["answered"] is False and refused["code"] == "UNAVAILABLE", refused


def test_readiness_of_the_real_node_goes_with_its_platform(api: Api) -> None:
    """The last cluster test: it stops the platform node."""
    channel = api.v2.channel
    assert health(channel, "") == "SERVING"
    api.cluster.kill("platform")
    deadline = time.monotonic() + 30
    while health(channel, "") == "SERVING" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert health(channel, "") == health(channel, "fedprofile.v2.Scoring") == "NOT_SERVING"
    assert health(channel, "fedprofile.v1.BankControl") == "SERVING"
    with pytest.raises(grpc.RpcError) as err:
        api.v2.score(api.model, api.shared[:1])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    fallback = api.v2.score(api.model, api.shared[:1], bank_only_fallback=True)
    assert fallback.rows[0].status == pb.PLATFORM_UNAVAILABLE and fallback.note
