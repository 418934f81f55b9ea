"""Issue 25, "no surprises for the people who run it": the real CLI against real node processes.

One cluster (two node processes over mutual TLS, one alignment, one small training job) serves every test
here; each test drives `bank-node` / `platform-node` as an operator would and reads what they print.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from simulations.cluster import LocalCluster, free_port
from tests.nodes_fixture import FAST_TRAIN, SimulatedFiles, simulated_files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimulatedFiles:
    return simulated_files(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def cluster(files: SimulatedFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), bank_data=files.bank, bank_id_column="id",
                      bank_tag_columns=files.tags, platform_data=files.platform, platform_id_column="id",
                      workers=1) as running:
        yield running


def node_cli(role: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``bank-node ARGS`` or ``platform-node ARGS`` in a process of its own, as typed in a shell."""
    return subprocess.run([sys.executable, "-m", f"party_{role}.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


# ---- config, one process per state directory, a taken port ----


def test_a_second_serve_on_the_same_state_directory_is_refused_naming_the_pid(cluster: LocalCluster) -> None:
    for role, config in (("bank", cluster.bank_config), ("platform", cluster.platform_config)):
        second = node_cli(role, "serve", "--config", str(config), timeout=60)
        assert second.returncode == 2, second.stderr
        pid = cluster.pids()[role]
        assert f"is in use: PID {pid} already serves this state directory as the {role} node" in second.stderr
    cluster.bank_client().wait_ready(timeout_s=5.0)  # the first ones still serve


def test_a_taken_port_is_refused_clearly(cluster: LocalCluster, tmp_path: Path) -> None:
    moved = tmp_path / "platform.toml"
    moved.write_text(cluster.platform_config.read_text().replace('state_dir = "state/platform"',
                                                                 f'state_dir = "{tmp_path / "other"}"'))
    second = node_cli("platform", "serve", "--config", str(moved), timeout=60)
    assert second.returncode == 2
    assert f"cannot listen on 127.0.0.1:{cluster.platform_port}: port {cluster.platform_port} is taken by " \
           "another process" in second.stderr, second.stderr


def test_a_misspelled_key_is_refused_with_the_right_spelling(cluster: LocalCluster, tmp_path: Path) -> None:
    bank = tmp_path / "bank.toml"
    bank.write_text(cluster.bank_config.read_text().replace("tag_columns =", "tag_colums =")
                    .replace('state_dir = "state/bank"', f'state_dir = "{tmp_path / "state"}"'))
    done = node_cli("bank", "serve", "--config", str(bank), timeout=60)
    assert done.returncode == 2
    assert re.search(r"\[data\]: unknown key 'tag_colums'; did you mean 'tag_columns'\? \(valid keys: .*fill_missing",
                     done.stderr), done.stderr
    bank.write_text(bank.read_text().replace("tag_colums =", "# tag_columns ="))
    done = node_cli("bank", "serve", "--config", str(bank), timeout=60)
    assert done.returncode == 2 and "the bank node needs at least one tag: add 'tag_columns'" in done.stderr
    assert not (tmp_path / "state" / "jobs.sqlite").exists()


# ---- one notion of "the same customer" ----


def test_the_split_hashes_the_normal_form() -> None:
    import hashlib
    import unicodedata

    from protocols.evaluation_metrics import id_hashes
    from protocols.identity import normalise_id

    def before(cid: str, seed: int) -> float:  # the split hash's input before protocols.identity: NFC, stripped
        digest = hashlib.blake2b(unicodedata.normalize("NFC", cid.strip()).encode(), digest_size=8,
                                 key=f"vfl-lr-split/{seed}".encode()).digest()
        return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)

    normal = ["+447700900123", "ann@example.com", "12345", "c-0001", "ß"]
    assert all(normalise_id(i) == i for i in normal[:4])
    assert id_hashes(normal[:4], 7).tolist() == [before(i, 7) for i in normal[:4]]  # the same split as before
    spellings = ["+44 7700 900123", "Ann@Example.COM", " 12345 ", "C-0001"]
    assert id_hashes(spellings, 7).tolist() == id_hashes(normal[:4], 7).tolist()  # one customer, one hash
    assert id_hashes(["C-0001"], 7)[0] != before("C-0001", 7)  # the documented change for such IDs


def test_ids_that_differ_only_by_case_are_refused_at_load(tmp_path: Path) -> None:
    from party_common.data_loading import load_party_data
    from protocols.party_data import DataError

    path = tmp_path / "b.csv"
    path.write_text("email,x,tag\nann@example.com,1,0\nbob@example.com,2,1\nAnn@Example.com,3,1\n")
    with pytest.raises(DataError, match=r"b.csv: column 'email': rows 1 and 3 hold the same customer ID, differing "
                                        r"only in case \(1 duplicate\(s\) in all\)"):
        load_party_data(path, id_column="email", tag_columns=["tag"])
    path.write_text("phone,x,tag\n+44 7700 900123,1,0\n+447700900123,2,1\n")
    with pytest.raises(DataError, match="rows 1 and 2 hold the same customer ID in different forms"):
        load_party_data(path, id_column="phone", tag_columns=["tag"])
    path.write_text("phone,x,tag\n\u3000,1,0\n+447700900123,2,1\n")  # an ideographic space: nothing
    with pytest.raises(DataError, match="column 'phone', row 1: empty ID"):
        load_party_data(path, id_column="phone", tag_columns=["tag"])


@pytest.fixture(scope="module")
def model(cluster: LocalCluster, files: SimulatedFiles) -> str:
    """One alignment and one small training job on the cluster: the model the scoring tests use."""
    client = cluster.bank_client()
    client.align()
    return str(client.train(tags=files.tags, train=FAST_TRAIN)["job_id"])


def bank(cluster: LocalCluster, *args: str) -> list[str]:
    return [*args, "--config", str(cluster.bank_config), *cluster.operator_args]


def spaced(phone: str) -> str:
    """``+447700900123`` as a person might type it: ``+44 7700 900 123``."""
    return f"{phone[:3]} {phone[3:7]} {phone[7:10]} {phone[10:]}"


def test_score_accepts_any_spelling_psi_matched_and_refuses_empty_ids(cluster: LocalCluster, model: str,
                                                                     files: SimulatedFiles,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from party_bank.cli import main

    member = sorted(files.shared_ids)[0]
    assert main(bank(cluster, "score", "--model", model, "--ids", f"{member},{spaced(member)}")) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("+44")]
    assert [r[1] for r in rows if r[0] == member] == ["ok"], out
    assert re.search(rf"^{re.escape(spaced(member))} +ok +0\.\d{{4}}", out, re.M), out
    assert main(bank(cluster, "score", "--model", model, "--ids", "")) == 1
    assert "empty" in capsys.readouterr().err


# ---- which model serves each tag ----


def test_the_served_model_is_shown_in_models_and_the_report(cluster: LocalCluster, model: str, files: SimulatedFiles,
                                                            tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from party_bank.cli import main

    assert main(bank(cluster, "models")) == 0
    out = capsys.readouterr().out
    assert "TAGS (served model, its test AUC)" in out
    assert all(re.search(rf"{tag}=joint 0\.\d{{3}}", out) for tag in files.tags), out  # FAST_TRAIN serves joint
    assert main(bank(cluster, "report", model, "--out", str(tmp_path / "r.html"))) == 0
    html = (tmp_path / "r.html").read_text()
    assert ">served model</th>" in html
    assert all(f'<td data-tag="{tag}" data-key="served">joint</td>' in html for tag in files.tags)
    # what went in, log-loss per tag, the parameters as run
    assert "<h2>Data and parameters</h2>" in html and f"<td>{files.bank.name}</td>" in html
    assert "<th>Dropped columns</th><td>none</td>" in html and "Platform features (" in html
    assert all(re.search(rf'data-tag="{tag}" data-key="logloss-joint">0\.\d{{3}}<', html) for tag in files.tags)
    assert all(re.search(rf'data-tag="{tag}" data-key="labelled">\d+ of \d+<', html) for tag in files.tags)
    for parameter in ("Learning rate", "L2 penalty", "Optimiser", "Paillier key size (bits)", "Label privacy"):
        assert f"<th>{parameter}</th>" in html


# ---- readable output ----


def test_status_reports_the_platform_honestly(cluster: LocalCluster, model: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from party_bank.cli import main

    assert main(bank(cluster, "status")) == 0
    out = capsys.readouterr().out
    assert "is serving" in out and re.search(r"the platform 'platform' at 127\.0\.0\.1:\d+ is reachable", out)
    cluster.kill("platform")
    try:
        assert main(bank(cluster, "status")) == 3
        out = capsys.readouterr().out
        assert "is serving" in out and "is NOT reachable" in out, out
    finally:
        cluster.restart("platform")
    assert main(bank(cluster, "status", "--wait", "60")) == 0
    capsys.readouterr()


def test_suggested_commands_carry_the_real_config_path(cluster: LocalCluster, model: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from party_bank.cli import main

    assert main(bank(cluster, "wait", model)) == 0
    out = capsys.readouterr().out
    assert f"bank-node report --config {cluster.bank_config} {model} --out report.html" in out
    assert "--config ..." not in out


def test_rerun_with_the_same_seed_gives_the_same_results(cluster: LocalCluster, model: str, files: SimulatedFiles,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from party_bank.cli import main

    assert main(bank(cluster, "rerun", model, "--json")) == 0  # label DP on (auto, on this small set)
    again = json.loads(capsys.readouterr().out)
    first = cluster.bank_client().job(model)
    assert again["params"]["train"]["seed"] == first["params"]["train"]["seed"]
    assert again["result"]["label_privacy"]["mode"] == "dp"
    # the same noisy labels (the noise key follows the seed under the bank's secret): the same AUCs, every epoch
    assert [h["validation_auc"] for h in again["result"]["history"]] == \
        [h["validation_auc"] for h in first["result"]["history"]]
    assert again["result"]["metrics"] == first["result"]["metrics"]
    # and the same models: the masks (fresh from `secrets` every run) cancel exactly
    ids = sorted(files.shared_ids)[:20]
    client = cluster.bank_client()
    assert np.array_equal(client.score(model, ids).probabilities, client.score(again["job_id"], ids).probabilities)
    secret = cluster.workdir / "state" / "bank" / "label_noise.key"
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_bytes()) == 32
    # another seed: other noise (and another split), so other numbers
    assert main(bank(cluster, "train", "--params", json.dumps({**FAST_TRAIN, "seed": 99}), "--json")) == 0
    other = json.loads(capsys.readouterr().out)
    assert other["result"]["metrics"] != first["result"]["metrics"]


# ---- preflight: the set-up checked before the first job ----


def preflight_rows(out: str) -> dict[str, tuple[str, str]]:
    """CHECK -> (STATUS, FOUND) from `preflight --json`."""
    return {c["name"]: (c["status"].upper(), c["detail"]) for c in json.loads(out)}


def test_preflight_passes_a_sound_setup_and_reaches_the_platform_over_mtls(cluster: LocalCluster,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from party_bank.cli import main
    from party_platform.cli import main as platform_main

    assert main(bank(cluster, "preflight", "--platform-config", str(cluster.platform_config))) == 0
    out = capsys.readouterr().out
    assert re.search(r"^CHECK +STATUS +FOUND +FIX$", out, re.M) and "ready for the first job" in out
    assert main(bank(cluster, "preflight", "--json", "--platform-config", str(cluster.platform_config))) == 0
    rows = preflight_rows(capsys.readouterr().out)
    assert all(status == "OK" for status, _ in rows.values()), out
    assert re.search(r"is 'platform', role node \(platform\) by its certificate", rows["platform certificate"][1])
    assert "mutual TLS accepted both ways" in rows["platform handshake"][1]
    assert {"config", "data file", "certificate", "private key", "CA matches", "operator certificate",
            "platform policy", "ID formats match", "tag tag_young_family"} <= set(rows), rows.keys()
    assert platform_main(["preflight", "--config", str(cluster.platform_config)]) == 0
    assert "0 failed" in capsys.readouterr().out


def edited(config: Path, out: Path, *replacements: tuple[str, str]) -> Path:
    text = config.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    out.write_text(text)
    return out


def files_of(config: Path) -> Path:
    """The data file a cluster config names."""
    return Path(config.read_text().split('path = "')[1].split('"')[0])


def test_preflight_names_each_failing_check_and_its_fix(cluster: LocalCluster, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from party_bank.cli import main

    certs = cluster.workdir / "certs"
    config = cluster.bank_config

    def run(path: Path, *extra: str) -> dict[str, tuple[str, str]]:
        code = main(["preflight", "--json", "--timeout", "2", *extra, "--config", str(path), *cluster.operator_args])
        out = capsys.readouterr()
        rows = preflight_rows(out.out)
        assert code == (1 if any(s == "FAIL" for s, _ in rows.values()) else 0), out
        return rows

    rows = run(edited(config, tmp_path / "a.toml", ("tag_columns =", "tag_colums =")))
    assert rows["config"][0] == "FAIL" and "unknown key 'tag_colums'; did you mean 'tag_columns'?" in rows["config"][1]
    # a data file with an empty column, a constant one, a thin tag, a tag of one class, and IDs in two formats
    data = tmp_path / "bank.csv"
    data.write_text("id,x,empty,const,tag_a,tag_b\n" + "".join(
        f"{'0' if i % 10 == 0 else '+44'}77009{i:05d},{i % 7},,3,{i % 2},0\n" for i in range(60)))
    rows = run(edited(config, tmp_path / "b.toml", (str(files_of(config)), str(data)),
                      ("tag_columns = [", 'tag_columns = ["tag_a", "tag_b"] # [')))
    assert rows["empty columns"] == ("WARN", "1 feature column(s) with no value at all, dropped: empty")
    assert rows["constant columns"][0] == "WARN" and rows["constant columns"][1].endswith("carry nothing): const")
    assert rows["tag tag_a"][0] == "WARN" and rows["tag tag_b"][0] == "FAIL"
    assert "one class only" in rows["tag tag_b"][1]
    assert rows["ID format"][0] == "WARN" and "mixes formats (phone +country 90%, phone without country code 10%)" \
        in rows["ID format"][1]
    # a private key readable by others; a key of another certificate
    loose = tmp_path / "loose.key"
    shutil.copy(certs / "bank" / "node.key", loose)
    loose.chmod(0o644)
    rows = run(edited(config, tmp_path / "c.toml", (str(certs / "bank" / "node.key"), str(loose))))
    assert rows["private key"] == ("FAIL", f"{loose}: mode 644, readable by others")
    rows = run(edited(config, tmp_path / "d.toml", (str(certs / "bank" / "node.key"),
                                                    str(certs / "platform" / "node.key"))))
    assert rows["private key"][0] == "FAIL" and "is not the key of the certificate" in rows["private key"][1]
    # the node's certificate not from its own CA; the platform's CA in the wrong place
    rows = run(edited(config, tmp_path / "e.toml", (f'client_ca = "{certs / "bank" / "ca.crt"}"',
                                                    f'client_ca = "{certs / "platform" / "ca.crt"}"'),
                      (f'client_crl = "{certs / "bank" / "crl.pem"}"', "")))
    assert rows["CA matches"][0] == "FAIL" and "is not issued by" in rows["CA matches"][1]
    rows = run(edited(config, tmp_path / "f.toml", (f'peer_ca = "{certs / "platform" / "ca.crt"}"',
                                                    f'peer_ca = "{certs / "bank" / "ca.crt"}"')))
    assert rows["peer CA CRL"][0] == "FAIL"
    assert rows["platform TLS"][0] == "FAIL" and "does not accept" in rows["platform TLS"][1]
    # nobody at the peer's address; a certificate the platform refuses (an operator's, not a node's)
    rows = run(edited(config, tmp_path / "g.toml", (f"127.0.0.1:{cluster.platform_port}", f"127.0.0.1:{free_port()}")))
    assert rows["platform reachable"][0] == "FAIL" and "nothing listens at" in rows["platform reachable"][1]
    operator = certs / "bank" / "operators"
    rows = run(edited(config, tmp_path / "h.toml", (str(certs / "bank" / "node.crt"), str(next(operator.glob("*.crt")))),
                      (str(certs / "bank" / "node.key"), str(next(operator.glob("*.key"))))))
    assert rows["certificate"][0] == "FAIL" and "not a node certificate" in rows["certificate"][1]
    assert rows["platform handshake"][0] == "FAIL" and "refused" in rows["platform handshake"][1]
    # what the platform's policy would refuse of the default job
    platform = edited(cluster.platform_config, tmp_path / "p.toml", ('state_dir = "state/platform"',
                                                                    f'state_dir = "{tmp_path / "ps"}"'))
    platform.write_text(platform.read_text() + '\n[policy]\nallowed_tags = ["tag_car_owner"]\npsi_protocols = '
                        '["ecdh"]\napproval = "manual"\nmin_intersection = 100000\n')
    assert main(bank(cluster, "preflight", "--json", "--platform-config", str(platform))) == 1
    text = "\n".join(f"{c['detail']} {c['fix']}" for c in json.loads(capsys.readouterr().out)
                     if c["name"] == "platform policy")
    for knob in ("psi_protocols", "approval", "allowed_tags", "min_intersection"):
        assert f"[policy] {knob}" in text, text
    assert "bank-node align --protocol ecdh" in text and "platform-node approve JOB" in text
    # a platform file keyed by e-mail where the bank's is keyed by phone: PSI would match nobody
    emails = tmp_path / "platform.csv"
    emails.write_text("id,v\n" + "".join(f"c{i}@example.com,{i}\n" for i in range(30)))
    platform.write_text(platform.read_text().replace(str(files_of(cluster.platform_config)), str(emails)))
    assert main(bank(cluster, "preflight", "--json", "--platform-config", str(platform))) == 1
    found = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    match = found["ID formats match"]
    assert match["status"] == "fail" and "mostly phone +country" in match["detail"] and "mostly e-mail" in match["detail"]


def test_preflight_refuses_an_expired_certificate_and_warns_before(cluster: LocalCluster) -> None:
    import datetime as dt

    from cryptography import x509

    from party_common.config import load_config
    from party_common.preflight import Checks, check_certificates

    config = load_config(cluster.bank_config, expected_role="bank")
    assert config.tls is not None
    until = x509.load_pem_x509_certificate(config.tls.cert.read_bytes()).not_valid_after_utc
    for now, status, words in ((until + dt.timedelta(days=1), "fail", "it expired on"),
                               (until - dt.timedelta(days=10), "warn", "expires in 10 day(s)")):
        checks = Checks()
        check_certificates(checks, config, now=now)
        found = next(c for c in checks.items if c.name == "certificate")
        assert found.status == status and words in found.detail and "fedprofile-certs node bank" in found.fix


def test_a_failed_handshake_prints_our_line_only(cluster: LocalCluster, tmp_path: Path) -> None:
    certs = cluster.workdir / "certs"
    done = node_cli("bank", "status", "--config", str(cluster.bank_config), "--cert",
                    str(certs / "platform" / "node.crt"), "--key", str(certs / "platform" / "node.key"), timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("bank-node status: "), done.stderr
    # the node's certificate without the name the client expects: the core's own "E..." line stays out too
    wrong = tmp_path / "bank.toml"
    wrong.write_text(cluster.bank_config.read_text().replace("[peer]", '[client]\ntls_name = "not-the-bank"\n\n[peer]'))
    done = node_cli("bank", "status", "--config", str(wrong), *cluster.operator_args, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "tls_name" in done.stderr, done.stderr


# ---- resume: said where it went on from ----


def test_a_resumed_train_job_says_from_which_epoch(cluster: LocalCluster, model: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from party_bank.cli import main

    client = cluster.bank_client()
    job = client.submit("train", {"train": {**FAST_TRAIN, "epochs": 3, "checkpoint_every": 1}}, "resume-me")
    deadline = time.monotonic() + 120
    while not re.match(r"epoch [23]/3", client.job(job).get("progress") or ""):  # past the first epoch's checkpoint
        assert time.monotonic() < deadline and client.job(job)["status"] in ("queued", "running"), client.job(job)
        time.sleep(0.1)
    cluster.kill("bank")
    cluster.restart("bank")
    assert main(bank(cluster, "status", "--wait", "60")) == 0
    capsys.readouterr()
    assert main(bank(cluster, "wait", job)) == 0
    captured = capsys.readouterr()
    assert re.search(r"resumed from epoch [23].*steps kept", captured.err), captured.err  # as it happens
    assert re.search(r"^resumed from epoch [23].*\(checkpoint\)", captured.out, re.M), captured.out  # the summary
    assert main(bank(cluster, "logs", job)) == 0
    assert "resumed from epoch" in capsys.readouterr().out
    assert "resumed from epoch" in cluster.log_tail("bank", 200)


def test_platform_preflight_names_what_its_policy_gets_wrong(cluster: LocalCluster, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from party_platform.cli import main as platform_main

    platform = edited(cluster.platform_config, tmp_path / "p.toml", ('state_dir = "state/platform"',
                                                                    f'state_dir = "{tmp_path / "ps"}"'))
    platform.write_text(platform.read_text() + '\n[policy]\nallowed_feature_columns = ["orders_baby", "nope"]\n')
    assert platform_main(["preflight", "--json", "--config", str(platform)]) == 1
    found = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert found["platform policy"]["status"] == "fail"
    assert "[policy] allowed_feature_columns names column(s) the platform's file lacks: nope" in \
        found["platform policy"]["detail"]
    assert found["certificate"]["status"] == "ok" and found["peer CA"]["status"] == "ok"
    assert not (tmp_path / "ps").exists()  # preflight leaves the state directory to the node


GRPC_NAME_MISMATCH = """
import sys
import party_bank  # what every bank-node command imports first
import grpc
from concurrent import futures
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
certs = sys.argv[1]
read = lambda p: open(f"{certs}/{p}", "rb").read()
server = grpc.server(futures.ThreadPoolExecutor(2))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
    [(read("platform/node.key"), read("platform/node.crt"))], root_certificates=read("bank/ca.crt"),
    require_client_auth=True))
server.start()
credentials = grpc.ssl_channel_credentials(read("platform/ca.crt"), read("bank/node.key"), read("bank/node.crt"))
channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "wrong")])
try:
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
except grpc.RpcError as err:
    print(f"ours: {err.code().name}", file=sys.stderr)
server.stop(0)
"""


def test_the_grpc_core_logs_nothing_of_its_own_unless_asked(cluster: LocalCluster) -> None:
    def run(**env: str) -> str:
        clean = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
        return subprocess.run([sys.executable, "-c", GRPC_NAME_MISMATCH, str(cluster.workdir / "certs")],
                              capture_output=True, text=True, timeout=60, env={**clean, **env}).stderr

    assert run() == "ours: UNAVAILABLE\n"  # a name mismatch: the core's "E... No match found" line stays out
    assert "No match found for server name" in run(GRPC_VERBOSITY="ERROR")  # the control: an operator may ask


def test_preflight_overlap_runs_a_cardinality_only_psi(cluster: LocalCluster, files: SimulatedFiles, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from party_bank.cli import main

    assert main(bank(cluster, "preflight", "--json", "--overlap")) == 0
    overlap = {c["name"]: c for c in json.loads(capsys.readouterr().out)}["estimated overlap"]
    assert overlap["status"] == "ok" and overlap["detail"].startswith(f"{len(files.shared_ids):,} shared customers")
    job = re.search(r"job (align-\S+)\)", overlap["detail"])
    assert job is not None
    record = cluster.bank_client().job(job.group(1))
    assert record["params"]["mode"] == "cardinality" and record["name"] == "preflight overlap"
    # the bank node not serving: said, with what to do
    away = edited(cluster.bank_config, tmp_path / "away.toml",
                  ("[peer]", f'[client]\naddress = "127.0.0.1:{free_port()}"\n\n[peer]'))
    assert main(["preflight", "--json", "--overlap", "--timeout", "1", "--config", str(away),
                 *cluster.operator_args]) == 1
    overlap = {c["name"]: c for c in json.loads(capsys.readouterr().out)}["estimated overlap"]
    assert overlap["status"] == "fail" and "does not answer" in overlap["detail"] and "bank-node serve" in overlap["fix"]
