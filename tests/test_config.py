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


@pytest.mark.parametrize("key,value,allowed", [
    ("workers", -5, "0 to 100 (0 = number of cores)"), ("workers", 101, "0 to 100"),
    ("tcp_peer_port", 70000, "0 to 65535"), ("metrics_port", -1, "0 to 65535"),
    ("graceful_timeout", 0, "> 0"), ("heartbeat_timeout", -1.5, "> 0"), ("request_queue_size", 0, ">= 1"),
    ("mem_cache", -1, ">= 0"), ("listen_address", "localhost:80", "IPv4 address"),
    ("dht_node_id", "abc", "96 hex characters"),
])
def test_out_of_range_values_are_one_line_naming_the_setting_and_its_range(key, value, allowed):
    with pytest.raises(cfg.ConfigError) as info:
        cfg.resolve({key: value})
    message = str(info.value)
    assert message.startswith(f"{key} = ") and allowed in message and "\n" not in message


@pytest.mark.parametrize("key,value", [("workers", 2.5), ("graceful_timeout", "nan"), ("upload_timeout", "inf")])
def test_numbers_that_are_not_numbers_of_the_type_are_refused(key, value):
    with pytest.raises(cfg.ConfigError, match=key):
        cfg.resolve({key: value})


def test_every_numeric_setting_has_a_range_and_its_default_is_in_it():
    for setting in cfg.SETTINGS:
        if setting.type in ("int", "float"):
            assert setting.range is not None, setting.key
            cfg.validate(setting, setting.default)
    assert cfg.resolve({"workers": 0, "metrics_port": 0}).workers == 0  # 0 keeps its documented meaning


def test_status_masks_secrets_and_userinfo_in_urls():
    planted = {"slack_hook_url": "https://hooks.slack.com/services/T0/B0/pl4ntedhook",
               "localdb_conn": "cache:pl4ntedpw@tcp(db:3306)/cache", "db_conn": "u:pl4nteddb@tcp(h:1)/d",
               "origin_endpoint": "https://edge:pl4ntedorigin@cdn.example/blobs/",
               "wallet_servers": ["tcp://u:pl4ntedws@spv.example:50001"], "blocklist_source": "http://a:pl4ntedbl@h/l"}
    public = json.dumps(cfg.resolve(planted).public())
    assert "pl4nted" not in public
    assert "https://***@cdn.example/blobs/" in public  # what is not secret stays readable


def test_log_lines_mask_secret_values_and_userinfo():
    from appliance import redact

    hide = redact.Redactor(["AKIApl4ntedKEY", "user:pl4nted@pw@tcp(h:3306)/db"])
    line = hide("boto: key AKIApl4ntedKEY refused; dsn user:pl4nted@pw@tcp(h:3306)/db; "
                "GET http://x:pl4ntedurl@host/a failed")
    assert "pl4nted" not in line and "http://***@host/a" in line
