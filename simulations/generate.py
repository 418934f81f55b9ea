"""Synthetic bank and platform data with hidden traits behind both sides.

Each person has hidden traits (young family, car owner, frequent traveller, affluent, pet owner, home
improver). The traits drive the bank's features (balances, product holdings, card spend mix) weakly and
the platform's features (category spend and order counts) strongly: the platform's signal is what the
bank's sparse tags are missing. The bank knows each tag for only ``label_share`` of its customers.

    python -m simulations.generate --out data/ --n-bank 20000 --n-platform 30000 --seed 0

writes ``bank.csv`` (id, bank features, tag_<trait>), ``platform.csv`` (id, platform features) and
``truth.csv`` (every bank customer's true traits and whether they are on the platform). IDs are
normalised UK mobile numbers; the same person has the same ID on both sides; rows are shuffled
independently per side. Same seed, same bytes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from party_common.storage.files import atomic_write

TRAITS = ("young_family", "car_owner", "frequent_traveller", "affluent", "pet_owner", "home_improver")
PREVALENCE = np.array([0.22, 0.45, 0.18, 0.15, 0.30, 0.25])


@dataclass(frozen=True)
class SimulationConfig:
    n_bank: int = 20_000
    n_platform: int = 30_000
    overlap: float = 0.6  # share of bank customers who are also platform users
    n_tags: int = 4
    label_share: float = 0.10  # share of bank customers whose tag is known, per tag
    seed: int = 0
    file_format: str = "csv"

    def validate(self) -> None:
        if self.n_bank < 10 or self.n_platform < 10:
            raise ValueError("n_bank and n_platform must be at least 10")
        if not 0.0 <= self.overlap <= 1.0 or not 0.0 < self.label_share <= 1.0:
            raise ValueError("overlap must be in [0, 1] and label_share in (0, 1]")
        if round(self.overlap * self.n_bank) > self.n_platform:
            raise ValueError("overlap * n_bank exceeds n_platform")
        if not 1 <= self.n_tags <= len(TRAITS):
            raise ValueError(f"n_tags must be between 1 and {len(TRAITS)}")
        if self.file_format not in ("csv", "parquet"):
            raise ValueError("file_format must be 'csv' or 'parquet'")


@dataclass
class SimulatedData:
    config: SimulationConfig
    bank: pd.DataFrame
    platform: pd.DataFrame
    truth: pd.DataFrame

    @property
    def tag_columns(self) -> list[str]:
        return [f"tag_{t}" for t in TRAITS[: self.config.n_tags]]


def _traits(rng: np.random.Generator, n: int) -> np.ndarray:
    """Correlated binary traits: a latent life-stage and wealth factor shift each trait's odds."""
    wealth = rng.normal(size=n)
    life = rng.normal(size=n)
    load = np.array([[0.1, 1.0], [0.6, 0.5], [0.9, -0.2], [1.4, 0.0], [0.0, 0.3], [0.5, 0.7]])
    logits = np.log(PREVALENCE / (1 - PREVALENCE)) + np.column_stack([wealth, life]) @ load.T * 0.8
    traits = rng.random((n, len(TRAITS))) < 1 / (1 + np.exp(-logits))
    return np.column_stack([traits.astype(np.int8), wealth[:, None]]).astype(np.float64)


def _phone_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    numbers = rng.choice(10**9, size=n, replace=False)
    return np.array([f"+447{x:09d}" for x in numbers], dtype=object)


def _bank_features(rng: np.random.Generator, t: np.ndarray) -> pd.DataFrame:
    n = len(t)
    fam, car, trav, aff, pet, home, wealth = (t[:, i] for i in range(7))
    income = np.exp(10.3 + 0.35 * wealth + 0.25 * aff + rng.normal(0, 0.35, n))
    spend = income * rng.uniform(0.25, 0.6, n) / 12
    # Card spend mix: weak trait signal under heavy noise (the bank sees only coarse categories).
    mix = rng.dirichlet(np.ones(6) * 3, size=n) * np.column_stack([
        1 + 0.25 * fam, 1 + 0.35 * car, 1 + 0.4 * trav, 1 + 0.3 * aff, 1 + 0.2 * pet, 1 + 0.2 * home])
    mix /= mix.sum(axis=1, keepdims=True)
    return pd.DataFrame({
        "age": np.clip(np.round(38 + 9 * rng.normal(size=n) - 5 * fam + 4 * aff), 18, 90),
        "tenure_years": np.round(rng.gamma(2.0, 4.0, n), 1),
        "income_monthly": np.round(income / 12, 2),
        "current_balance": np.round(rng.lognormal(7 + 0.6 * wealth, 1.0), 2),
        "savings_balance": np.round(rng.lognormal(8 + 0.9 * wealth + 0.5 * aff, 1.3) * (rng.random(n) < 0.7), 2),
        "has_mortgage": (rng.random(n) < 0.2 + 0.15 * fam + 0.1 * home + 0.1 * aff).astype(int),
        "has_car_loan": (rng.random(n) < 0.05 + 0.2 * car).astype(int),
        "has_travel_insurance": (rng.random(n) < 0.05 + 0.15 * trav).astype(int),
        "n_products": rng.poisson(1.5 + 0.8 * aff + 0.3 * fam),
        "card_spend_monthly": np.round(spend, 2),
        "share_groceries": np.round(mix[:, 0], 4),
        "share_fuel": np.round(mix[:, 1], 4),
        "share_travel": np.round(mix[:, 2], 4),
        "share_luxury": np.round(mix[:, 3], 4),
        "share_pets": np.round(mix[:, 4], 4),
        "share_hardware": np.round(mix[:, 5], 4),
        "fx_transactions": rng.poisson(0.3 + 1.2 * trav),
    })


def _platform_features(rng: np.random.Generator, t: np.ndarray) -> pd.DataFrame:
    n = len(t)
    fam, car, trav, aff, pet, home, wealth = (t[:, i] for i in range(7))
    activity = rng.gamma(1.2, 1.0, n)  # how much someone shops online at all
    cols: dict[str, np.ndarray] = {}
    categories = {  # category: (driving trait, base orders, trait lift)
        "baby": (fam, 0.25, 0.45), "toys": (fam, 0.4, 0.25), "auto_parts": (car, 0.25, 0.45),
        "car_care": (car, 0.3, 0.15), "luggage": (trav, 0.15, 0.4), "travel_accessories": (trav, 0.25, 0.35),
        "luxury": (aff, 0.2, 0.25), "pet_supplies": (pet, 0.25, 0.4), "diy_tools": (home, 0.3, 0.3),
        "garden": (home, 0.4, 0.15),
    }
    for name, (trait, base, lift) in categories.items():
        rate = activity * (base + lift * trait)
        orders = rng.poisson(rate)
        price = rng.lognormal(3.2 + 0.3 * wealth + 0.5 * aff, 0.5)
        cols[f"orders_{name}"] = orders
        cols[f"spend_{name}"] = np.round(orders * price, 2)
    for name in ("electronics", "fashion", "books", "groceries"):
        orders = rng.poisson(activity * rng.uniform(0.3, 1.5))
        cols[f"orders_{name}"] = orders
        cols[f"spend_{name}"] = np.round(orders * rng.lognormal(3.0 + 0.2 * wealth, 0.6), 2)
    cols["sessions_30d"] = rng.poisson(4 * activity + 1)
    cols["days_since_last_order"] = np.round(rng.exponential(30 / (activity + 0.2)), 0)
    cols["mobile_share"] = np.round(rng.beta(2 + 2 * fam, 2, n), 3)
    cols["premium_member"] = (rng.random(n) < 0.08 + 0.25 * aff + 0.05 * activity).astype(int)
    cols["avg_basket"] = np.round(rng.lognormal(3.5 + 0.3 * wealth + 0.4 * aff, 0.4), 2)
    cols["returns_rate"] = np.round(rng.beta(1.5, 10, n), 3)
    return pd.DataFrame(cols)


def generate(config: SimulationConfig) -> SimulatedData:
    """Make both parties' tables and the ground truth, deterministically for ``config.seed``."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    n_shared = round(config.overlap * config.n_bank)
    n_people = config.n_bank + config.n_platform - n_shared
    traits = _traits(rng, n_people)
    ids = _phone_ids(rng, n_people)
    # People 0..n_bank-1 bank with the bank; the first n_shared of them also shop on the platform.
    bank_people = np.arange(config.n_bank)
    platform_people = np.concatenate([np.arange(n_shared), np.arange(config.n_bank, n_people)])

    bank = _bank_features(rng, traits[bank_people])
    bank.insert(0, "id", ids[bank_people])
    for j, trait in enumerate(TRAITS[: config.n_tags]):
        known = rng.random(config.n_bank) < config.label_share
        values = traits[bank_people, j].astype(int).astype(object)
        values[~known] = None
        bank[f"tag_{trait}"] = pd.array(values, dtype="Int8")
    platform = _platform_features(rng, traits[platform_people])
    platform.insert(0, "id", ids[platform_people])
    truth = pd.DataFrame({"id": ids[bank_people], **{t: traits[bank_people, j].astype(int)
                                                     for j, t in enumerate(TRAITS)}})
    truth["in_platform"] = (bank_people < n_shared).astype(int)

    bank = bank.iloc[rng.permutation(len(bank))].reset_index(drop=True)
    platform = platform.iloc[rng.permutation(len(platform))].reset_index(drop=True)
    return SimulatedData(config=config, bank=bank, platform=platform, truth=truth)


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".parquet":
        import io

        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        atomic_write(path, buffer.getvalue())
    else:
        atomic_write(path, frame.to_csv(index=False, lineterminator="\n").encode())


def write(data: SimulatedData, out_dir: Path) -> dict[str, Path]:
    """Write bank, platform and truth files atomically; return their paths."""
    out_dir = Path(out_dir)
    ext = "parquet" if data.config.file_format == "parquet" else "csv"
    paths = {"bank": out_dir / f"bank.{ext}", "platform": out_dir / f"platform.{ext}", "truth": out_dir / f"truth.{ext}"}
    _write_frame(data.bank, paths["bank"])
    _write_frame(data.platform, paths["platform"])
    _write_frame(data.truth, paths["truth"])
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.generate", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-bank", type=int, default=SimulationConfig.n_bank)
    p.add_argument("--n-platform", type=int, default=SimulationConfig.n_platform)
    p.add_argument("--overlap", type=float, default=SimulationConfig.overlap)
    p.add_argument("--n-tags", type=int, default=SimulationConfig.n_tags)
    p.add_argument("--label-share", type=float, default=SimulationConfig.label_share)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    args = p.parse_args(argv)
    config = SimulationConfig(n_bank=args.n_bank, n_platform=args.n_platform, overlap=args.overlap,
                              n_tags=args.n_tags, label_share=args.label_share, seed=args.seed,
                              file_format=args.format)
    try:
        paths = write(generate(config), args.out)
    except ValueError as err:
        print(f"simulations.generate: {err}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name:9s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
