"""The first lines of `prism reflector`: where it listens, which outside hosts it contacts, what changes that."""
from appliance import config as cfg
from appliance import configfile
from appliance.cli.exposure import listeners, outside_contacts, summary


def test_reflector_go_defaults_listen_everywhere_and_name_every_outside_host():
    config = cfg.resolve()
    where, reach = summary(config)
    assert where.startswith("listening on every interface: 5566/tcp uploads, 5567/tcp TCP peer, 5569/tcp HTTP, "
                            "5568/udp HTTP/3, 4444/udp DHT")
    assert "--listen-address 127.0.0.1" in where
    for host in ("lbrynet1.lbry.com:4444", "api.lbry.com", "spv25.lbry.com:50001", "api.odysee.com"):
        assert host in reach, host
    assert "--disable-dht" in reach and "--disable-blocklist" in reach and 'protected_content_url = ""' in reach


def test_quick_start_profile_listens_on_loopback_and_contacts_nobody():
    config = cfg.resolve(configfile.QUICK_START_PROFILE)
    where, reach = summary(config)
    assert where.startswith("listening on 127.0.0.1 only: ") and "--listen-address 0.0.0.0" in where
    assert outside_contacts(config) == []
    assert reach.startswith("contacting no outside host")


def test_only_what_is_on_is_listed():
    config = cfg.resolve({"disable_uploads": True, "disable_dht": True, "http3_peer_port": 0, "metrics_port": 0,
                          "disable_blocklist": True, "protected_content_url": "",
                          "upstream_reflector": "cache.example:5569",
                          "db_conn": "u:p@tcp(db.example:3306)/reflector"})
    assert listeners(config) == ["5567/tcp TCP peer", "5569/tcp HTTP"]
    assert outside_contacts(config) == ["upstream reflector cache.example:5569", "MySQL db.example:3306"]
