"""The generated config file and secrets example, the secrets file merge, and reflector.go's config.json."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import config as cfg
from appliance import configfile

REPO = Path(__file__).resolve().parent.parent
SPEC = Path("/work/shared/spec/reflector-go.md")


def run_configfile(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.configfile", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("path,render", [
    (configfile.DIST_CONFIG, lambda: configfile.render_config(configfile.SERVICE_PROFILE)),
    (configfile.DIST_SECRETS, configfile.render_secrets_example),
    (configfile.DIST_QUICK_START, lambda: configfile.render_config(configfile.QUICK_START_PROFILE, "quick-start")),
])
def test_generated_files_are_in_step_with_the_settings_table(path, render):
    assert path.read_text() == render(), (
        f"{path.relative_to(REPO)} is out of step with appliance/config.py; regenerate it with: "
        f"{configfile.REGENERATE}")


def uncomment_defaults(text: str) -> str:
    """Turn every `# key = value` default line into a real setting (skipping unset ones)."""
    return re.sub(r"^# ([a-z0-9_]+) = (?!\(unset\))", r"\1 = ", text, flags=re.M)


def test_every_setting_is_documented_with_its_default(tmp_path):
    text = configfile.render_config()
    secrets = configfile.render_secrets_example()
    for setting in cfg.SETTINGS:
        where = secrets if setting.secret else text
        assert re.search(rf"^(# )?{setting.key} = ", where, re.M), setting.key
        assert f"# {setting.help}" in where, setting.key
    # Every rendered default is valid TOML that reads back as exactly the built-in default.
    for rendered in (text, secrets):
        path = tmp_path / "all.toml"
        path.write_text(uncomment_defaults(rendered))
        values = cfg.load_file(str(path))
        assert values, "no default line was uncommented"
        config = cfg.resolve(values)
        assert not config.unknown_keys
        for key in values:
            assert getattr(config, key) == cfg.BY_KEY[key].default, key


def test_service_profile_sets_the_service_paths(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(configfile.render_config(configfile.SERVICE_PROFILE))
    config = cfg.resolve(cfg.load_file(str(path)))
    assert config.storage_dir == "/var/lib/reflector-appliance/blobs"
    assert config.state_dir == "/var/lib/reflector-appliance/state"
    assert config.cache_dir == "/var/cache/reflector-appliance"
    assert config.runtime_dir == "/run/reflector-appliance"
    assert config.secrets_file == "/etc/reflector-appliance/secrets.toml"
    assert not any(s.secret and re.search(rf"^#? ?{s.key} =", path.read_text(), re.M) for s in cfg.SETTINGS)


EXPOSURE_KEYS = ("listen_address", "dht_seeds", "disable_blocklist", "protected_content_url")


@pytest.mark.parametrize("path", [configfile.DIST_CONFIG, configfile.DIST_QUICK_START])
def test_packaged_configs_state_what_they_expose_and_contact(path):
    text = path.read_text()
    for key in EXPOSURE_KEYS:  # a real line, not a commented default
        assert re.search(rf"^{key} = ", text, re.M), (path.name, key)


def test_quick_start_config_stays_on_the_machine():
    config = cfg.resolve(cfg.load_file(str(configfile.DIST_QUICK_START)))
    assert config.listen_address == "127.0.0.1"
    assert config.dht_seeds == [] and config.disable_blocklist and config.protected_content_url == ""
    assert config.storage_dir == cfg.BY_KEY["storage_dir"].default  # paths stay the checkout's


def test_secrets_file_is_merged_over_the_config(tmp_path):
    (tmp_path / "config.toml").write_text('secrets_file = "secrets.toml"\naws_id = "from-config"\n'
                                          'bucket_name = "b"\n')
    (tmp_path / "secrets.toml").write_text('aws_id = "AKIA"\naws_secret = "s3cr3t"\n'
                                           'db_conn = "u:p@tcp(localhost:3306)/reflector"\n')
    config = cfg.resolve(cfg.load_file(str(tmp_path / "config.toml")))
    assert (config.aws_id, config.aws_secret, config.bucket_name) == ("AKIA", "s3cr3t", "b")
    assert config.db_conn == "u:p@tcp(localhost:3306)/reflector"
    assert config.public()["aws_secret"] == "***"


def test_missing_secrets_file_is_fine_unreadable_is_a_clear_error(tmp_path):
    conf = tmp_path / "config.toml"
    conf.write_text(f'secrets_file = "{tmp_path / "absent.toml"}"\nbucket_name = "b"\n')
    assert cfg.load_file(str(conf))["bucket_name"] == "b"
    (tmp_path / "dir.toml").mkdir()  # root reads any file, but nobody reads a directory as a file
    conf.write_text('secrets_file = "dir.toml"\n')
    with pytest.raises(cfg.ConfigError, match=r"^cannot read secrets file .*dir\.toml: Is a directory$"):
        cfg.load_file(str(conf))
    (tmp_path / "bad.toml").write_text("aws_id = \n")
    conf.write_text('secrets_file = "bad.toml"\n')
    with pytest.raises(cfg.ConfigError, match=r"^cannot parse secrets file .*bad\.toml"):
        cfg.load_file(str(conf))


def test_reflector_go_config_json_example_is_verbatim_and_loads():
    shipped = (REPO / "config" / "config.json").read_text()
    if SPEC.exists():
        template = re.search(r"`config.tmpl` \(shipped template\) is exactly:\n```json\n(.*?)```", SPEC.read_text(),
                             re.S).group(1)
        assert shipped == template
    config = cfg.resolve(cfg.load_file(str(REPO / "config" / "config.json")))
    assert not config.unknown_keys
    assert config.db_conn == json.loads(shipped)["db_conn"] and config.bucket_name == "YOUR-BUCKET-NAME"


def test_check_accepts_the_shipped_config_and_refuses_bad_ones(tmp_path):
    good = run_configfile("--check", str(configfile.DIST_CONFIG))
    assert good.returncode == 0, good.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('tcp_peer_port = 5567\ntcp_peer_prot = 1\n')
    result = run_configfile("--check", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"configfile: {bad}: unknown settings: tcp_peer_prot"]
    bad.write_text('tcp_peer_port = "many"\n')
    result = run_configfile("--check", str(bad))
    assert result.returncode == 1 and "tcp_peer_port: invalid int value 'many'" in result.stderr


def test_check_warns_about_world_readable_secrets(tmp_path):
    conf = tmp_path / "config.toml"
    conf.write_text('secrets_file = "secrets.toml"\n')
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('aws_secret = "x"\n')
    os.chmod(secrets, 0o644)
    result = run_configfile("--check", str(conf))
    assert result.returncode == 0 and "readable by every user" in result.stderr
    os.chmod(secrets, 0o640)
    assert "readable" not in run_configfile("--check", str(conf)).stderr


def test_cli_prints_each_profile():
    assert run_configfile().stdout == configfile.render_config()
    assert run_configfile("--service").stdout == configfile.DIST_CONFIG.read_text()
    assert run_configfile("--secrets").stdout == configfile.DIST_SECRETS.read_text()
