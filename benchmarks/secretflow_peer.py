"""One party of SecretFlow's PSI (the ``spu`` package, ``spu.psi.psi_execute``), as its own process.

    python benchmarks/secretflow_peer.py --rank 0|1 --protocol ecdh|kkrt|rr22 --ports P0,P1 --input CSV --output CSV

Standard library and ``spu`` only: ``benchmarks/psi.py`` starts two of these (rank 0 receives, the result is
broadcast to both), with the interpreter of whichever environment has ``spu`` installed. The parties talk
over SecretFlow's own brpc link on loopback (no TLS). The input CSV has one column, ``id``; the output CSV
holds the intersection. The last line printed is JSON: ``{"seconds": ..., "intersection": ..., ...}``,
``seconds`` being ``psi_execute`` alone (it reads the input and writes the output itself).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, choices=[0, 1], required=True)
    parser.add_argument("--protocol", choices=["ecdh", "kkrt", "rr22"], required=True)
    parser.add_argument("--ports", required=True, help="the two parties' loopback ports, comma-separated")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()  # spu needs absolute paths

    import spu.libspu.link as link
    from spu import psi

    desc = link.Desc()
    desc.id = f"bench-psi-{args.protocol}"
    for rank, port in enumerate(args.ports.split(",")):
        desc.add_party(f"party{rank}", f"127.0.0.1:{port}")
    desc.recv_timeout_ms = 3_600_000
    desc.http_timeout_ms = 600_000
    desc.connect_retry_times = 120
    desc.connect_retry_interval_ms = 500
    lctx = link.create_brpc(desc, args.rank)

    if args.protocol == "ecdh":
        protocol = psi.PsiProtocolConfig(protocol=psi.PsiProtocol.PROTOCOL_ECDH, receiver_rank=0,
                                         broadcast_result=True,
                                         ecdh_params=psi.EcdhParams(curve=psi.EllipticCurveType.CURVE_25519))
    elif args.protocol == "kkrt":
        protocol = psi.PsiProtocolConfig(protocol=psi.PsiProtocol.PROTOCOL_KKRT, receiver_rank=0,
                                         broadcast_result=True)
    else:
        protocol = psi.PsiProtocolConfig(protocol=psi.PsiProtocol.PROTOCOL_RR22, receiver_rank=0,
                                         broadcast_result=True, rr22_params=psi.Rr22Rarams(low_comm_mode=False))
    config = psi.PsiExecuteConfig(
        protocol_conf=protocol,
        input_params=psi.InputParams(type=psi.SourceType.SOURCE_TYPE_FILE_CSV, path=os.path.abspath(args.input),
                                     selected_keys=["id"], keys_unique=True),
        output_params=psi.OutputParams(type=psi.SourceType.SOURCE_TYPE_FILE_CSV, path=os.path.abspath(args.output),
                                       disable_alignment=True),
        join_conf=psi.ResultJoinConfig(type=psi.ResultJoinType.JOIN_TYPE_INNER_JOIN, left_side_rank=0),
    )
    lctx.barrier()  # both links up: the clock starts with the protocol, not with process start-up
    started = time.monotonic()
    report = psi.psi_execute(config, lctx)
    seconds = time.monotonic() - started
    lctx.stop_link()
    print(json.dumps({"seconds": round(seconds, 3), "intersection": report.intersection_count,
                      "original": report.original_count}), flush=True)


if __name__ == "__main__":
    main()
