"""Hostile input against live nodes over mutual TLS: every message refused with a clear status, none crashes
or hangs a node, and a normal job succeeds afterwards.

    python -m benchmarks.fuzz --messages 10000 --json fuzz.json

Both nodes run as separate processes (``simulations.cluster.LocalCluster``). The fuzzer holds valid
certificates, as an attacker inside either organisation would: the bank node's (to reach the platform's
``Node`` service) and an operator's (to reach the bank's control API). It sends:

* stateless hostile calls: wrong protocol versions and roles in the handshake, malformed or wrong-version
  session openings, steps for sessions that do not exist, broken chunk streams, garbage payloads, oversized
  messages, partial-score requests with bad rows, arrays and models, and control-API requests with bad JSON,
  paths that leave the state directory, unknown models and jobs;
* hostile steps inside real sessions (:class:`HookedLink`): a PSI and a training run of the bank's own protocol
  code, where before each genuine step the fuzzer sends mutated copies of it at the right sequence number
  (ciphertexts outside Z*_(N^2), not invertible or of the wrong length, fields dropped or of the wrong type,
  out-of-range indices, other steps out of order, wrong sequence numbers) and after it a replay. The run must
  still finish: a refused message leaves the session as it was.

Each hostile message is classified by the status it gets: ``refused`` (an error status with a message),
``crashes`` (INTERNAL or UNKNOWN: a bug; or a node process that died), ``hangs`` (no answer before the
deadline), ``accepted`` (OK: it should not have been) or ``unclear`` (an error status without a message).
A Score whose every customer comes back ``unknown_customer`` (the bank answers per customer, no probability)
counts as ``refused``: it is handled, customer by customer, not accepted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.common import console, print_table, write_json
from party_bank.grpc_link import GrpcChannel, GrpcPlatformLink
from party_bank.scores import UNKNOWN_CUSTOMER
from party_common.codec import array_to_pb, to_payload
from party_common.data_loading import load_party_data
from party_common.link import ContextPeer, SessionContext
from party_common.transport import CHUNK_BYTES, PROTOCOL_VERSION, chunk_payload, dial
from proto import fedprofile_v1_pb2 as pb
from proto import fedprofile_v1_pb2_grpc as pb_grpc
from protocols.channel import Message
from protocols.paillier import PublicKey
from protocols.psi import messages as psi_wire
from protocols.psi import run_bank_psi
from protocols.vfl_lr import TrainParams, run_bank_training
from protocols.vfl_lr.messages import Field, Step
from simulations.cluster import LocalCluster
from simulations.generate import SimulationConfig, generate, write

DEADLINE_S = 20.0
TRAIN = {"epochs": 1, "batch_size": 64, "validation_share": 0.2}
STEPS = {"psi": [psi_wire.HELLO, psi_wire.EXCHANGE, psi_wire.CARDINALITY_BATCH, psi_wire.FINISH],
         "train": [v for k, v in vars(Step).items() if k.isupper()]}
CIPHER_FIELDS = {Field.MASKS: "bank", Field.ENCRYPTED_SCORES: "bank_evaluation", Field.MASKED_GRADIENT: "platform",
                 Field.MASKED_RESIDUALS: "platform"}
BAD_IDS = ["", "x", "../../etc/passwd", "a" * 65, "job id with spaces", "train-\u00e9\u00e9\u00e9\u00e9\u00e9",
           "train-00000000\x00", "@@@@@@@@", "job-" + "9" * 61]


@dataclasses.dataclass
class Tally:
    sent: int = 0
    refused: int = 0
    crashes: int = 0
    hangs: int = 0
    accepted: int = 0
    unclear: int = 0
    by_category: Counter[str] = dataclasses.field(default_factory=Counter)
    statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    problems: list[str] = dataclasses.field(default_factory=list)  # the first crashes, hangs and acceptances

    def record(self, category: str, err: grpc.RpcError | None) -> None:
        self.sent += 1
        self.by_category[category] += 1
        code = err.code() if err is not None else grpc.StatusCode.OK
        details = (err.details() or "") if err is not None else ""
        self.statuses[code.name] += 1
        if code == grpc.StatusCode.OK:
            self.accepted += 1
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self.hangs += 1
        elif code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            self.crashes += 1
        elif not details.strip():
            self.unclear += 1
        else:
            self.refused += 1
            return
        if len(self.problems) < 20:
            self.problems.append(f"{category}: {code.name} {details[:300]}")


def refused_per_customer(result: object) -> bool:
    """A Score answered per customer with every one refused as ``unknown_customer`` (no probability)."""
    return isinstance(result, pb.ScoreResponse) and len(result.status) > 0 and \
        all(status == UNKNOWN_CUSTOMER for status in result.status)


def call(tally: Tally, category: str, fn: Callable[[], Any]) -> None:
    try:
        result = fn()
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as err:
        tally.record(category, err)
    else:
        if refused_per_customer(result):
            tally.sent += 1
            tally.refused += 1
            tally.by_category[category] += 1
            tally.statuses[f"OK ({UNKNOWN_CUSTOMER} per customer)"] += 1
        else:
            tally.record(category, None)


def steps_call(stub: pb_grpc.NodeStub, chunks: list[pb.StepChunk]) -> Callable[[], Any]:
    return lambda: list(stub.Step(iter(chunks), timeout=DEADLINE_S))


def payload_bytes(message: Message) -> bytes:
    return to_payload(message).SerializeToString()


def random_job_id(rng: random.Random) -> str:
    return f"fuzz-{rng.getrandbits(48):012x}"


# ---- hostile steps inside real sessions ----


def ciphertext_variants(data: bytes, key: PublicKey) -> list[tuple[str, bytes]]:
    width, n, n2 = key.byte_len, int(key.n), int(key.nsquare)
    rest = data[width:]

    def first(c: int) -> bytes:
        return c.to_bytes(width, "big") + rest

    out = [("ciphertext >= N^2", first(n2)), ("ciphertext all ones", b"\xff" * width + rest),
           ("ciphertext 0", first(0)), ("ciphertext N, not invertible", first(n)),
           ("ciphertext 7N, not invertible", first(7 * n)), ("ciphertexts one byte short", data[:-1]),
           ("ciphertexts one byte long", data + b"\x00")]
    # Not "one ciphertext fewer": a well-formed message with a count the honest protocol never sends is a deviation,
    # which stops the session on purpose (tests/test_deviating_bank.py, tests/test_private_evaluation.py), so it
    # cannot be one of the copies injected into the genuine session this benchmark keeps running.
    return out


def message_variants(kind: str, step: str, message: Message, keys: dict[str, PublicKey],
                     rng: random.Random) -> list[tuple[str, str, Message]]:
    """Mutated copies of a genuine step message: (category, step name, message); the ciphertext ones first."""
    ciphertexts: list[tuple[str, str, Message]] = []
    out: list[tuple[str, str, Message]] = []
    for name, value in message.items():
        key = keys.get(CIPHER_FIELDS.get(name, ""))
        if key is not None and isinstance(value, bytes) and value and len(value) % key.byte_len == 0:
            ciphertexts += [(f"ciphertext: {label}", step, {**message, name: bad})
                            for label, bad in ciphertext_variants(value, key)]
        out.append(("field dropped", step, {k: v for k, v in message.items() if k != name}))
        out.append(("field of the wrong type", step, {**message, name: 7 if isinstance(value, str | bytes) else "x"}))
        if isinstance(value, int) and not isinstance(value, bool):
            out += [("integer out of range", step, {**message, name: bad}) for bad in (-1, 2**62)]
        elif isinstance(value, np.ndarray) and value.size:
            out.append(("array of the wrong dtype", step, {**message, name: value.astype(np.float64)}))
            if value.dtype.kind in "iu":
                bad = value.astype(np.int64).copy()
                bad.flat[0] = -1
                out.append(("array with a negative index", step, {**message, name: bad}))
                out.append(("array with an index out of range", step,
                            {**message, name: np.append(value.astype(np.int64).ravel(), 10**12)}))
        elif isinstance(value, bytes) and value:
            out.append(("bytes one short", step, {**message, name: value[:-1]}))
    for other in STEPS[kind]:
        if other != step:
            out.append(("step out of order", other, message))
    out.append(("unknown step", f"{kind}.bogus", message))
    rng.shuffle(ciphertexts)
    rng.shuffle(out)
    return ciphertexts + out


class HookedChannel:
    """A genuine session's channel; before each genuine step, hostile copies at the same sequence number."""

    def __init__(self, inner: GrpcChannel, stub: pb_grpc.NodeStub, kind: str, tally: Tally, rng: random.Random,
                 per_step: int, keys: dict[str, PublicKey]) -> None:
        self.inner, self.stub, self.kind, self.tally, self.rng = inner, stub, kind, tally, rng
        self.per_step, self.keys = per_step, keys

    def call(self, step: str, message: Message) -> Message:
        if step == Step.SETUP and Field.BANK_KEY in message:
            self.keys["bank"] = PublicKey.from_bytes(message[Field.BANK_KEY])
            self.keys["bank_evaluation"] = PublicKey.from_bytes(message[Field.BANK_EVALUATION_KEY])
        job, seq = self.inner.job_id, self.inner._seq + 1
        for category, bad_step, bad in message_variants(self.kind, step, message, self.keys, self.rng)[:self.per_step]:
            chunks = list(chunk_payload(job, bad_step, seq, payload_bytes(bad)))
            call(self.tally, f"in session: {category}", steps_call(self.stub, chunks))
        garbage = list(chunk_payload(job, step, seq, secrets.token_bytes(self.rng.randrange(1, 4096))))
        call(self.tally, "in session: garbage payload", steps_call(self.stub, garbage))
        genuine = list(chunk_payload(job, step, seq + 1 + self.rng.randrange(3), payload_bytes(message)))
        call(self.tally, "in session: wrong sequence number", steps_call(self.stub, genuine))
        reply = self.inner.call(step, message)
        if step == Step.SETUP and Field.PLATFORM_KEY in reply:
            self.keys["platform"] = PublicKey.from_bytes(reply[Field.PLATFORM_KEY])
        replay = list(chunk_payload(job, step, seq, payload_bytes(message)))
        call(self.tally, "in session: replayed step", steps_call(self.stub, replay))
        return reply

    def close(self, *, aborted: bool = False, reason: str = "") -> None:
        self.inner.close(aborted=aborted, reason=reason)


class HookedLink(GrpcPlatformLink):
    """The bank's link with every session hooked; wrong-version openings sent before each genuine one."""

    def __init__(self, channel: grpc.Channel, tally: Tally, rng: random.Random, per_step: int) -> None:
        super().__init__(channel, node_name="bank", address="fuzz", step_timeout_s=DEADLINE_S)
        self.tally, self.rng, self.per_step = tally, rng, per_step
        self.stub = pb_grpc.NodeStub(channel)

    def open(self, kind: str, job_id: str, params: Message, *, context: SessionContext) -> Any:
        for field in ("version",):
            bad = {**params, field: "fedprofile-v0"}
            request = pb.OpenSessionRequest(kind=kind, job_id=random_job_id(self.rng), params=to_payload(bad))
            call(self.tally, "wrong-version session", lambda r=request: self.stub.OpenSession(r, timeout=DEADLINE_S))
        inner = super().open(kind, job_id, params, context=context)
        return HookedChannel(inner, self.stub, kind, self.tally, self.rng, self.per_step, {})


# ---- stateless hostile calls ----


def stateless_calls(node: pb_grpc.NodeStub, control: pb_grpc.BankControlStub, model: str,
                    rng: random.Random) -> list[tuple[str, Callable[[], Any]]]:
    """One of each kind of stateless hostile call, built with fresh random values."""
    job = random_job_id(rng)
    garbage = secrets.token_bytes(rng.randrange(1, 2048))
    calls: list[tuple[str, Callable[[], Any]]] = []

    def hello(role: int, version: str) -> Callable[[], Any]:
        request = pb.HandshakeRequest(hello=pb.Hello(role=role, node_name="fuzz", protocol_version=version))
        return lambda: node.Handshake(request, timeout=DEADLINE_S)

    calls.append(("wrong-version handshake", hello(pb.BANK, rng.choice(["0.1", "9.0", "", "x.y", "2"]))))
    calls.append(("wrong-role handshake", hello(rng.choice([pb.PLATFORM, 7]), PROTOCOL_VERSION)))
    params = rng.choice([{"version": "psi-v0", "mode": "both", "batch_size": 10},
                         {"version": psi_wire.VERSION, "mode": "everything", "batch_size": 10},
                         {"version": psi_wire.VERSION, "mode": "both", "batch_size": -5},
                         {"version": psi_wire.VERSION, "mode": "both", "batch_size": 10**12},
                         {"version": psi_wire.VERSION, "mode": "both", "batch_size": True}])
    open_psi = pb.OpenSessionRequest(kind="psi", job_id=job, params=to_payload(params))
    calls.append(("malformed session opening", lambda: node.OpenSession(open_psi, timeout=DEADLINE_S)))
    open_bad = pb.OpenSessionRequest(kind=rng.choice(["", "psi2", "train", "../x"]), job_id=rng.choice(BAD_IDS + [job]),
                                     context=pb.SessionContext(alignment_job_id=rng.choice(BAD_IDS + [job])))
    calls.append(("malformed session opening", lambda: node.OpenSession(open_bad, timeout=DEADLINE_S)))
    broken = pb.OpenSessionRequest(kind="psi", job_id=job)
    broken.params.fields["version"].array_value.CopyFrom(pb.Array(dtype="<i8", shape=[2**40, 2**40], data=b""))
    calls.append(("malformed array", lambda: node.OpenSession(broken, timeout=DEADLINE_S)))
    calls.append(("step without a session", steps_call(node, list(chunk_payload(job, psi_wire.HELLO, 1, garbage)))))
    calls.append(("garbage step payload", steps_call(node, [pb.StepChunk(job_id=job, step="psi.hello", seq=1,
                                                                         index=0, data=garbage, last=True)])))
    calls.append(("chunk out of order", steps_call(node, [pb.StepChunk(job_id=job, step="s", seq=1, index=3,
                                                                       data=garbage, last=True)])))
    calls.append(("chunks disagree", steps_call(node, [pb.StepChunk(job_id=job, step="s", seq=1, index=0, data=b"a"),
                                                       pb.StepChunk(job_id=job, step="t", seq=2, index=1, last=True)])))
    calls.append(("stream without its last chunk", steps_call(node, [pb.StepChunk(job_id=job, step="s", seq=1)])))
    rows = rng.choice([np.array([0.5]), np.array([[1, 2]], dtype=np.int64), np.array([-1], dtype=np.int64),
                       np.array([0, 0], dtype=np.int64), np.array([10**9], dtype=np.int64), np.array([], dtype=np.int64),
                       np.array(["a"]), np.arange(3, dtype=np.int32)])
    rows_pb = array_to_pb(rows) if rows.dtype.kind != "U" else pb.Array(dtype="<U1", shape=[1], data=b"a\0\0\0")
    score = pb.PartialScoreRequest(model_job_id=rng.choice([model, model, job] + BAD_IDS), rows=rows_pb,
                                   tags=rng.choice([[], ["no_such_tag"], ["x" * 5000]]))
    calls.append(("hostile partial score", lambda: node.PartialScore(score, timeout=DEADLINE_S)))
    huge = pb.PartialScoreRequest(model_job_id=model, rows=pb.Array(dtype="<i8", shape=[2**31, 2**33], data=b""))
    calls.append(("malformed array", lambda: node.PartialScore(huge, timeout=DEADLINE_S)))
    retire = pb.RetireModelRequest(model_job_id=rng.choice(BAD_IDS))
    calls.append(("hostile retire", lambda: node.RetireModel(retire, timeout=DEADLINE_S)))
    spec = pb.JobSpec(kind=rng.choice(["align", "train", "delete", ""]),
                      params_json=rng.choice(["{", "[]", '{"mode": "all"}', '{"train": {"lr": 1}}', '"x"',
                                              '{"tags": ["nope"]}', json.dumps({"batch_size": -1})]))
    calls.append(("hostile job submission", lambda: control.SubmitJob(spec, timeout=DEADLINE_S)))
    ids = rng.choice([["no-such-customer"], [], ["x" * 10_000]])
    scorer = pb.ScoreRequest(model_job_id=rng.choice([model, job, "a@b"] + BAD_IDS), customer_ids=ids)
    calls.append(("hostile score", lambda: control.Score(scorer, timeout=DEADLINE_S)))
    out = pb.BatchScoreRequest(model_job_id=model, output_path=rng.choice(
        ["../escape.csv", "/tmp/fuzz-abs.csv", "~/fuzz.csv", "a/../../b.csv", "scores.txt", ""]))
    calls.append(("batch-score path escape", lambda: control.BatchScore(out, timeout=DEADLINE_S)))
    get = pb.GetJobRequest(job_id=rng.choice(BAD_IDS + [job]))
    calls.append(("hostile job lookup", lambda: control.GetJob(get, timeout=DEADLINE_S)))
    return calls


def oversized_calls(node: pb_grpc.NodeStub, rng: random.Random) -> list[tuple[str, Callable[[], Any]]]:
    job = random_job_id(rng)
    big = pb.StepChunk(job_id=job, step=psi_wire.HELLO, seq=1, index=0, data=bytes(CHUNK_BYTES + 200_000), last=True)
    many = [pb.StepChunk(job_id=job, step=psi_wire.HELLO, seq=1, index=i, data=bytes(CHUNK_BYTES)) for i in range(6)]
    return [("oversized message", steps_call(node, [big])),
            ("oversized stream for no session (6 chunks of 2 MiB)", steps_call(node, many)),
            ("oversized declared PSI size", lambda: declare_huge_psi(node, random_job_id(rng)))]


def declare_huge_psi(node: pb_grpc.NodeStub, job: str) -> Any:
    """A genuine PSI session (not counted) whose hello declares more IDs than the platform accepts (counted)."""
    params = {psi_wire.PARAM_VERSION: psi_wire.VERSION, psi_wire.PARAM_MODE: "both", psi_wire.PARAM_BATCH_SIZE: 100}
    node.OpenSession(pb.OpenSessionRequest(kind="psi", job_id=job, params=to_payload(params)), timeout=DEADLINE_S)
    hello = {psi_wire.BANK_NONCE: bytes(psi_wire.NONCE), psi_wire.BANK_SIZE: 10**9}
    try:
        return list(node.Step(chunk_payload(job, psi_wire.HELLO, 1, payload_bytes(hello)), timeout=DEADLINE_S))
    finally:
        node.CloseSession(pb.CloseSessionRequest(job_id=job, aborted=True), timeout=DEADLINE_S)


# ---- the run ----


def run(messages: int, workdir: Path, seed: int, *, train_after: bool = True) -> dict[str, Any]:
    """Start both nodes on small simulated data and fuzz them (:func:`fuzz_cluster`)."""
    data = generate(SimulationConfig(n_bank=260, n_platform=300, overlap=0.7, n_tags=2, label_share=0.6, seed=11))
    paths = write(data, workdir / "data")
    with LocalCluster(workdir / "cluster", bank_data=paths["bank"], bank_id_column="id",
                      bank_tag_columns=list(data.tag_columns), platform_data=paths["platform"],
                      platform_id_column="id", workers=1) as cluster:
        client = cluster.bank_client()
        align = client.align(mode="both")["job_id"]
        model = client.train(tags=list(data.tag_columns), train=TRAIN)["job_id"]
        return fuzz_cluster(cluster, paths["bank"], list(data.tag_columns), align, model, messages, seed,
                            train_after=train_after)


def fuzz_cluster(cluster: LocalCluster, bank_file: Path, tags: list[str], align: str, model: str, messages: int,
                 seed: int, *, train_after: bool = True, per_step: int | None = None) -> dict[str, Any]:
    """Send ``messages`` hostile messages to a running cluster whose bank has run align job ``align`` and train
    job ``model`` on ``bank_file``; then run normal jobs (align, score, and train unless ``train_after`` is off).
    ``per_step``: hostile copies sent before each genuine step of the hooked sessions (default from ``messages``)."""
    rng = random.Random(seed)
    tally = Tally()
    client = cluster.bank_client()
    certs = cluster.certs
    node_channel = dial(f"127.0.0.1:{cluster.platform_port}", cert=certs["bank_cert"].read_bytes(),
                        key=certs["bank_key"].read_bytes(), server_ca=certs["platform_ca"].read_bytes(),
                        tls_name="platform")
    control_channel = dial(f"127.0.0.1:{cluster.bank_port}", cert=certs["operator_cert"].read_bytes(),
                           key=certs["operator_key"].read_bytes(), server_ca=certs["bank_ca"].read_bytes())
    node, control = pb_grpc.NodeStub(node_channel), pb_grpc.BankControlStub(control_channel)
    started = time.monotonic()
    # Inside real sessions: a PSI and a training run of the bank's own code, hostile copies before each step.
    per_step = per_step or max(2, min(16, messages // 80))
    link = HookedLink(node_channel, tally, rng, per_step)
    bank = load_party_data(bank_file, id_column="id", tag_columns=tags)
    hooked: dict[str, str] = {}
    try:
        run_bank_psi(ContextPeer(link, SessionContext(job_name="fuzz")), random_job_id(rng), list(bank.ids),
                     mode="both", batch_size=64, compute=1)
        hooked["psi"] = "finished"
        alignment = cluster.bank_alignment(align)
        peer = ContextPeer(link, SessionContext(alignment_job_id=alignment.job_id,
                                                alignment_hash=alignment.content_hash, job_name="fuzz"))
        run_bank_training(peer, random_job_id(rng), bank.take(alignment.ids or []), TrainParams(**TRAIN),
                          compute=1)
        hooked["train"] = "finished"
    except Exception as err:  # the hooked runs must finish; a refused message must not break its session
        hooked["error"] = f"{type(err).__name__}: {err}"[:500]
    next_oversized = tally.sent
    while tally.sent < messages:
        batch = stateless_calls(node, control, model, rng)
        if tally.sent >= next_oversized:  # oversized ones cost megabytes each: a few per 200 messages
            batch = oversized_calls(node, rng) + batch
            next_oversized += 200
        for category, fn in batch[:messages - tally.sent]:
            call(tally, category, fn)
    seconds = time.monotonic() - started
    dead = [role for role, proc in cluster.processes.items() if proc.poll() is not None]
    tally.crashes += len(dead)
    normal_after = False
    try:
        after = client.align(mode="both")
        scored = client.score(model, [str(i) for i in (cluster.bank_alignment(after["job_id"]).ids or [])[:3]])
        trained = client.train(tags=tags, train=TRAIN) if train_after else {"metrics": {"skipped": True}}
        normal_after = bool(after["intersection_size"]) and bool(trained["metrics"]) and len(scored.tags) > 0
    except Exception as err:
        tally.problems.append(f"normal job after: {type(err).__name__}: {err}"[:500])
    logged_bugs = sum((cluster.workdir / f"{role}.log").read_text(errors="replace").count("unexpected error")
                      for role in ("bank", "platform"))
    node_channel.close()
    control_channel.close()
    return {"sent": tally.sent, "refused": tally.refused, "crashes": tally.crashes, "hangs": tally.hangs,
            "accepted": tally.accepted, "unclear": tally.unclear, "normal_job_after": normal_after,
            "hooked_sessions": hooked, "dead_nodes": dead, "internal_errors_logged": logged_bugs,
            "seconds": round(seconds, 1), "messages_per_second": round(tally.sent / max(seconds, 1e-9), 1),
            "by_category": dict(sorted(tally.by_category.items())), "statuses": dict(sorted(tally.statuses.items())),
            "problems": tally.problems, "seed": seed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="hostile messages to send")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="keep the cluster's files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.workdir:
        result = run(args.messages, Path(args.workdir), args.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
            result = run(args.messages, Path(tmp), args.seed)
    write_json(args.json, result)
    print_table("Hostile input against live nodes", [(k, str(result[k])) for k in (
        "sent", "refused", "crashes", "hangs", "accepted", "unclear", "normal_job_after", "seconds")], ("", "value"))
    for problem in result["problems"]:
        console.print(f"[red]{problem}[/]")
    ok = (result["crashes"] == result["hangs"] == result["accepted"] == result["unclear"] == 0
          and result["normal_job_after"] and "error" not in result["hooked_sessions"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
