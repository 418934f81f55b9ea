"""Both nodes in one process over the in-memory link, on small simulated data (shared by node-level tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from party_bank.node import BankNode
from party_common.config import DataConfig, NodeConfig
from party_common.data_loading import load_party_data
from party_common.link import LocalPlatformLink
from party_common.storage import NodeStores, memory_node_stores
from party_platform.node import PlatformNode
from protocols.party_data import PartyData
from simulations.generate import SimulationConfig, generate, write

# Small enough for 2048-bit keys in a few seconds, large enough for two batches and every split.
SIMULATION = SimulationConfig(n_bank=260, n_platform=300, overlap=0.7, n_tags=2, label_share=0.6, seed=11)
# serve "joint": one epoch of two batches does not beat the bank's own model, which "best" would then serve
FAST_TRAIN = {"epochs": 1, "batch_size": 64, "validation_share": 0.2, "serve": "joint"}


@dataclass
class SimulatedFiles:
    bank: Path
    platform: Path
    tags: list[str]
    shared_ids: set[str]


def simulated_files(out: Path) -> SimulatedFiles:
    data = generate(SIMULATION)
    paths = write(data, out)
    shared = set(data.bank["id"]) & set(data.platform["id"])
    return SimulatedFiles(paths["bank"], paths["platform"], list(data.tag_columns), shared)


def node_config(state_dir: Path, role: str, data_path: Path, tags: list[str] | None = None) -> NodeConfig:
    return NodeConfig(source=state_dir / f"{role}.toml", name=role, role=role,  # type: ignore[arg-type]
                      listen="127.0.0.1:0", state_dir=state_dir / role, peer_address="", peer_tls_name=None,
                      tls=None, data=DataConfig(path=data_path, id_column="id", tag_columns=tuple(tags or ())),
                      workers=1)


@dataclass
class Nodes:
    bank: BankNode
    platform: PlatformNode
    link: LocalPlatformLink


def make_nodes(files: SimulatedFiles, state_dir: Path, *, bank_stores: NodeStores | None = None,
               platform_stores: NodeStores | None = None, bank_data: PartyData | None = None,
               platform_data: PartyData | None = None) -> Nodes:
    platform = PlatformNode(node_config(state_dir, "platform", files.platform),
                            data=platform_data or load_party_data(files.platform, id_column="id"),
                            stores=platform_stores or memory_node_stores())
    link = LocalPlatformLink(platform)
    bank = BankNode(node_config(state_dir, "bank", files.bank, files.tags),
                    link, data=bank_data or load_party_data(files.bank, id_column="id", tag_columns=files.tags),
                    stores=bank_stores or memory_node_stores())
    return Nodes(bank, platform, link)
