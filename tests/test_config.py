"""Node config files: what a correct one gives, and errors that say what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from party_common.certs import init_local_pki
from party_common.config import ConfigError, load_config
from simulations.cluster import write_configs


@pytest.fixture()
def configs(tmp_path: Path) -> tuple[Path, Path]:
    init_local_pki(tmp_path / "certs")
    (tmp_path / "b.csv").write_text("id,x,tag\n1,0.5,1\n")
    (tmp_path / "p.csv").write_text("id,y\n1,0.5\n")
    return write_configs(tmp_path, bank_data=tmp_path / "b.csv", bank_id_column="id", bank_tag_columns=["tag"],
                         platform_data=tmp_path / "p.csv", platform_id_column="id", bank_port=7001,
                         platform_port=7002)


def test_generated_configs_load(configs: tuple[Path, Path]) -> None:
    bank, platform = configs
    b = load_config(bank, expected_role="bank")
    p = load_config(platform, expected_role="platform")
    assert b.peer_address == "127.0.0.1:7002" and b.data.tag_columns == ("tag",)
    assert b.tls is not None and b.tls.client_ca is not None and b.tls.client_ca.exists()
    assert p.listen == "127.0.0.1:7002" and p.data.tag_columns == ()
    assert p.peer_tls_name == "bank" and p.tls is not None and p.tls.peer_crl is not None
    assert b.tls.client_crl == b.tls.client_ca.parent / "crl.pem"
    assert b.state_dir == bank.parent / "state" / "bank"


def edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(("old", "new", "message"), [
    ('role = "bank"', 'role = "platform"', "role is 'platform'"),
    ('listen = "127.0.0.1:7001"', 'listen = "127.0.0.1"', "is not host:port"),
    ("workers = 2", "workers = 0", "'workers' must be at least 1"),
    ("workers = 2", 'workers = "two"', "'workers' must be a int"),
    ('fill_missing = "error"', 'fill_missing = "guess"', "'fill_missing' must be one of"),
    ('id_column = "id"', "", "missing key 'id_column'"),
    ("[peer]", "[pier]", "unknown section 'pier'; did you mean 'peer'?"),
])
def test_bank_config_errors_name_the_key(configs: tuple[Path, Path], old: str, new: str, message: str) -> None:
    bank, _ = configs
    edit(bank, old, new)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("?", r"\?")) as err:
        load_config(bank, expected_role="bank")
    assert str(bank) in str(err.value)


def test_tls_is_required_unless_insecure_dev(configs: tuple[Path, Path]) -> None:
    _, platform = configs
    text = platform.read_text()
    start = text.index("[tls]")
    end = text.index("[data]")
    platform.write_text(text[:start] + text[end:])
    with pytest.raises(ConfigError, match="mutual TLS is required"):
        load_config(platform, expected_role="platform")
    assert load_config(platform, expected_role="platform", require_tls=False).tls is None


def test_missing_tls_file_and_tags_on_platform(configs: tuple[Path, Path]) -> None:
    bank, platform = configs
    (bank.parent / "certs" / "platform" / "crl.pem").unlink()
    with pytest.raises(ConfigError, match="'peer_crl' file .* does not exist"):
        load_config(bank, expected_role="bank")
    (bank.parent / "certs" / "platform" / "ca.crt").unlink()
    with pytest.raises(ConfigError, match="'peer_ca' file .* does not exist"):
        load_config(bank, expected_role="bank")
    edit(platform, 'fill_missing = "error"', 'fill_missing = "error"\ntag_columns = ["t"]')
    with pytest.raises(ConfigError, match="the platform holds no tags"):
        load_config(platform, expected_role="platform", require_tls=False)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", expected_role="bank")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, expected_role="bank")


def test_platform_policy(configs: tuple[Path, Path]) -> None:
    bank, platform = configs
    assert load_config(platform, expected_role="platform").max_released_projections is None
    with platform.open("a") as f:
        f.write("\n[policy]\nmax_released_projections = 6\n")
    assert load_config(platform, expected_role="platform").max_released_projections == 6
    edit(platform, "max_released_projections = 6", "max_released_projections = 0")
    with pytest.raises(ConfigError, match="must be at least 1"):
        load_config(platform, expected_role="platform")
    with bank.open("a") as f:
        f.write("\n[policy]\nmax_released_projections = 6\n")
    with pytest.raises(ConfigError, match="only the platform node has a policy section"):
        load_config(bank, expected_role="bank")


@pytest.mark.parametrize(("section", "message"), [
    ('[compute]\nbackend = "spark"\n', "'backend' must be one of pool, ray"),
    ('[compute]\nbackend = "ray"\nworkers = 0\n', "'workers' must be at least 1"),
    ('[compute]\nbackend = "pool"\naddress = "auto"\n', "'address' and 'workers' are for backend"),
    ('[compute]\nbackend = "ray"\nadress = "auto"\n', "unknown key"),
])
def test_compute_section_errors_name_the_key(configs: tuple[Path, Path], section: str, message: str) -> None:
    bank, _ = configs
    bank.write_text(bank.read_text() + "\n" + section)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(bank, expected_role="bank")
    assert "[compute]" in str(err.value)


def test_compute_defaults_to_the_pool_and_reads_ray(configs: tuple[Path, Path]) -> None:
    bank, _ = configs
    assert load_config(bank, expected_role="bank").compute.backend == "pool"
    bank.write_text(bank.read_text() + '\n[compute]\nbackend = "ray"\naddress = "10.0.0.5:6379"\nworkers = 16\n')
    compute = load_config(bank, expected_role="bank").compute
    assert (compute.backend, compute.address, compute.workers) == ("ray", "10.0.0.5:6379", 16)


def test_platform_names_the_bank_node_it_serves(configs: tuple[Path, Path]) -> None:
    _, platform = configs
    edit(platform, 'tls_name = "bank"', "")
    with pytest.raises(ConfigError, match=r"the platform needs 'tls_name', the name in the bank node's certificate"):
        load_config(platform, expected_role="platform")
    edit(platform, "[peer]", '[peer]\ntls_name = "bank"')
    assert load_config(platform, expected_role="platform").peer_tls_name == "bank"
    edit(platform, "[tls]", '[tls]\nclient_ca = "certs/bank/ca.crt"')
    with pytest.raises(ConfigError, match="the platform serves only the bank node"):
        load_config(platform, expected_role="platform")


def test_client_section_tells_the_cli_where_the_control_api_is(configs: tuple[Path, Path]) -> None:
    bank, _ = configs
    local = load_config(bank, expected_role="bank")
    assert (local.client_address, local.client_tls_name, local.metrics_listen) == ("127.0.0.1:7001", None, None)
    edit(bank, 'listen = "127.0.0.1:7001"', 'listen = "0.0.0.0:7001"')
    assert load_config(bank, expected_role="bank").client_address == "127.0.0.1:7001"  # wildcard: this machine
    text = bank.read_text() + '\n[client]\naddress = "bank.internal:7001"\ntls_name = "bank"\n' \
                              '\n[metrics]\nlisten = "127.0.0.1:9100"\n'
    bank.write_text(text)
    remote = load_config(bank, expected_role="bank")
    assert (remote.client_address, remote.client_tls_name) == ("bank.internal:7001", "bank")
    assert remote.metrics_listen == "127.0.0.1:9100" and remote.listen == "0.0.0.0:7001"


@pytest.mark.parametrize(("section", "error"), [
    ('[client]\naddress = "bank.internal"\n', r"\[client\] address: 'bank.internal' is not host:port"),
    ('[client]\nadress = "bank.internal:7001"\n', r"\[client\]: unknown key 'adress'"),
    ('[metrics]\nlisten = 9100\n', r"\[metrics\]: 'listen' must be a str"),
])
def test_client_and_metrics_mistakes_are_named(configs: tuple[Path, Path], section: str, error: str) -> None:
    bank, _ = configs
    bank.write_text(bank.read_text() + "\n" + section)
    with pytest.raises(ConfigError, match=error):
        load_config(bank, expected_role="bank")


@pytest.mark.parametrize(("section", "old", "new", "message"), [
    ("data", "tag_columns =", "tag_colums =", r"\[data\]: unknown key 'tag_colums'; did you mean 'tag_columns'\?"),
    ("node", "workers = 2", "workres = 2", r"\[node\]: unknown key 'workres'; did you mean 'workers'\?"),
    ("peer", 'tls_name = "platform"', 'tls_nam = "platform"', r"unknown key 'tls_nam'; did you mean 'tls_name'"),
    ("tls", "peer_crl =", "peer_clr =", r"\[tls\]: unknown key 'peer_clr'; did you mean 'peer_crl'"),
    ("", "[data]", "[dta]\npath = 'x'\n[data]", r"unknown section 'dta'; did you mean 'data'\?"),
])
def test_unknown_keys_are_refused_with_the_valid_ones(configs: tuple[Path, Path], section: str, old: str, new: str,
                                                      message: str) -> None:
    bank, _ = configs
    edit(bank, old, new)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(bank, expected_role="bank")
    assert "valid keys:" in str(err.value) or "valid sections:" in str(err.value)
    assert str(bank) in str(err.value)


def test_a_bank_without_tags_is_refused_with_advice(configs: tuple[Path, Path]) -> None:
    bank, _ = configs
    edit(bank, 'tag_columns = ["tag"]', "")
    with pytest.raises(ConfigError, match="the bank node needs at least one tag: add 'tag_columns'"):
        load_config(bank, expected_role="bank")


def test_the_state_directory_lock_names_its_holder(tmp_path: Path) -> None:
    import os

    from party_common.state_lock import StateDirInUse, lock_state_dir
    held = lock_state_dir(tmp_path / "state", what="bank node")
    with pytest.raises(StateDirInUse, match=f"PID {os.getpid()} already serves this state directory"):
        lock_state_dir(tmp_path / "state", what="bank node")
    held.release()
    lock_state_dir(tmp_path / "state", what="bank node").release()


def test_the_config_comes_from_the_option_the_environment_or_a_default_place(tmp_path, monkeypatch):
    from party_common.cli_format import CONFIG_ENV, resolve_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(SystemExit, match=r"bank-node: no config: give --config FILE, set FEDPROFILE_CONFIG, or put it "
                                         r"at bank.toml or .*home/.config/fedprofile/bank.toml"):
        resolve_config(None, "bank", "bank-node")
    home = tmp_path / "home" / ".config" / "fedprofile"
    home.mkdir(parents=True)
    (home / "bank.toml").write_text("")
    assert resolve_config(None, "bank", "bank-node") == str(home / "bank.toml")
    (tmp_path / "bank.toml").write_text("")
    assert resolve_config(None, "bank", "bank-node") == "bank.toml"  # the working folder's first
    monkeypatch.setenv(CONFIG_ENV, "/etc/fedprofile/bank.toml")
    assert resolve_config(None, "bank", "bank-node") == "/etc/fedprofile/bank.toml"
    assert resolve_config("given.toml", "bank", "bank-node") == "given.toml"  # the option wins


def test_the_cli_reads_fedprofile_config(tmp_path, monkeypatch, capsys):
    """`platform-node policy` with no --config, the path in FEDPROFILE_CONFIG: the error names that file."""
    from party_platform.cli import main

    monkeypatch.setenv("FEDPROFILE_CONFIG", str(tmp_path / "missing.toml"))
    assert main(["policy"]) == 2
    assert "missing.toml" in capsys.readouterr().err
