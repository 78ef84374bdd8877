import json

import pytest

from appliance import config as cfg
from appliance.cli.prism import build_parser


def test_reflector_go_config_json_keys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"aws_id": "A", "bucket_name": "b", "db_conn": "u:p@tcp(h:1)/d", "other": "x"}))
    config = cfg.resolve(cfg.load_file(str(path)))
    assert (config.aws_id, config.bucket_name, config.db_conn) == ("A", "b", "u:p@tcp(h:1)/d")
    assert config.unknown_keys == ["other"]
    assert config.public()["aws_id"] == "***"


def test_toml_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('tcp_peer_port = 6000\nuse_db = false\ndht_seeds = ["a:1", "b:2"]\n')
    config = cfg.resolve(cfg.load_file(str(path)), {"tcp_peer_port": "7000"})
    assert config.tcp_peer_port == 7000 and config.use_db is False and config.dht_seeds == ["a:1", "b:2"]


def test_bad_values_are_one_line_errors(tmp_path):
    with pytest.raises(cfg.ConfigError, match="tcp_peer_port"):
        cfg.resolve({"tcp_peer_port": "many"})
    with pytest.raises(cfg.ConfigError, match="upstream_protocol"):
        cfg.resolve({"upstream_protocol": "smoke"})
    with pytest.raises(cfg.ConfigError, match="not found"):
        cfg.load_file(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(cfg.ConfigError, match="cannot parse"):
        cfg.load_file(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("value,expected", [("true", True), ("false", False), ("1", True), ("F", False)])
def test_bool_flags_accept_go_forms(value, expected):
    assert cfg.parse_bool(value) is expected


def test_global_flags_before_or_after_subcommand():
    parser = build_parser()
    before = parser.parse_args(["--conf", "x.json", "-v", "dht", "version"])
    after = parser.parse_args(["version", "--conf", "x.json", "-v", "dht,node_finder"])
    assert before.conf == after.conf == "x.json"
    assert before.verbose == ["dht"] and after.verbose == ["dht,node_finder"]
