"""What operators import, checked by the real tools: promtool checks and unit-tests the alert rules,
every metric (and label) the rules and the Grafana dashboard name exists in a live two-worker appliance's
/metrics, and Debian's Prometheus scrapes that appliance and sums its download counter correctly."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.appliance_process import (
    REPO,
    appliance_fixture,  # noqa: F401  (the `appliance` fixture)
    free_ports,
    http_get,
    http_status,
    poll,
    write_blobs,
)

DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "reflector-appliance.json"
# Labels Prometheus adds at scrape or that Grafana fills in: not the appliance's to export.
TARGET_LABELS = {"instance", "job"}
SELECTOR = re.compile(r"\b((?:reflector|appliance)_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
BY = re.compile(r"\bby\s*\(([^)]*)\)")


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/test installs Debian's prometheus)")
    return path


def test_promtool_checks_and_unit_tests_the_alert_rules():
    promtool = tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    units = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=ALERTS.parent, capture_output=True,
                           text=True)
    assert units.returncode == 0, units.stdout + units.stderr
    # Every alert of the rules file has a unit test.
    alerts = set(re.findall(r"^\s*- alert: (\w+)", ALERTS.read_text(), re.M))
    tested = set(re.findall(r"^\s*alertname: (\w+)", (ALERTS.parent / "alerts_test.yml").read_text(), re.M))
    assert alerts and alerts == tested


def expressions() -> list[str]:
    """Every PromQL expression of the alert rules and of the dashboard's panels and variables."""
    found = re.findall(r"^\s*expr: >-\n((?:\s{10,}.*\n)+)|^\s*expr: (.+)$", ALERTS.read_text(), re.M)
    exprs = [" ".join((block or line).split()) for block, line in found]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        exprs += [target["expr"] for target in panel.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_the_dashboard_is_for_grafana_10_with_a_prometheus_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 38  # Grafana 10
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 15 and len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("protocol", "hit ratio", "origin", "cache fill", "evictions", "processes", "restarts", "upload",
                  "dht"):
        assert topic in titles, topic


def parse_metrics(text: str) -> dict[str, list[dict[str, str]]]:
    """name -> the label sets of its samples."""
    samples: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head = line.rsplit(" ", 1)[0]
        name, _, labels = head.partition("{")
        samples.setdefault(name, []).append({k: v for k, _, v in MATCHER.findall(labels)})
    return samples


def missing_metrics(exprs: list[str], samples: dict[str, list[dict[str, str]]]) -> list[str]:
    """What the expressions name that /metrics does not have: metrics, labels, label values."""
    problems = []
    for expr in exprs:
        names = set()
        for name, selector in SELECTOR.findall(expr):
            names.add(name)
            if name not in samples:
                problems.append(f"{name} (in {expr[:60]}...)")
                continue
            for label, op, value in MATCHER.findall(selector or ""):
                if label in TARGET_LABELS:
                    continue
                if op == "=" and not any(s.get(label) == value for s in samples[name]):
                    problems.append(f'{name}{{{label}="{value}"}}')
                elif not any(label in s for s in samples[name]):
                    problems.append(f"{name} has no label {label}")
        for group in BY.findall(expr):
            for label in (x.strip() for x in group.split(",")):
                if label in TARGET_LABELS or not names:
                    continue
                if not any(label in s for name in names if name in samples for s in samples[name]):
                    problems.append(f"no metric of {sorted(names)} has the label {label} (by)")
    return sorted(set(problems))


def upload_garbage(port: int) -> None:
    """A reflector-protocol handshake followed by a malformed request: an upload error."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b'{"version": 1}')
        sock.recv(100)
        sock.sendall(b'{"blob_hash": "zz", "blob_size": 10}')
        sock.settimeout(10)
        try:
            while sock.recv(100):
                pass
        except OSError:
            pass


def test_a_live_appliance_exports_what_the_rules_and_dashboard_use_and_prometheus_sums_it(appliance, tmp_path):
    """One two-worker node caching from an origin: misses, hits, an eviction, a 404, an upload error and an
    origin error, then its /metrics is checked against every expression, and Prometheus scrapes it."""
    prometheus = tool("prometheus")
    blobs = write_blobs(tmp_path / "origin", 5, 300_000)
    origin = appliance("--workers", "1", "--storage-dir", str(tmp_path / "origin"), name="origin", wait=False)
    node = appliance("--workers", "2", "--upstream-reflector", f"127.0.0.1:{origin.ports['http']}",
                     "--disk-cache", f"1MB:{tmp_path / 'cache'}:lru", "--dht-port", str(free_ports(1)[0]), dht=True,
                     name="node", wait=False)
    origin.wait_ready()
    node.wait_ready()
    hashes, downloads = list(blobs), 0
    for hash_ in hashes[:4]:  # misses fetched from the origin; the fourth evicts the first
        assert http_get(node.ports["http"], hash_) == blobs[hash_]
        downloads += 1
    for _ in range(10):
        for hash_ in hashes[1:4]:  # hits, on fresh connections that SO_REUSEPORT spreads over both workers
            assert http_get(node.ports["http"], hash_) == blobs[hash_]
            downloads += 1
    assert http_status(node, "ab" * 48)[0] == 404  # the origin has no such blob
    upload_garbage(node.ports["receiver"])
    origin.stop()
    assert http_status(node, hashes[4])[0] == 500  # an origin error
    poll(lambda: [bool(p["requests"]) for p in node.status()["processes"] if p["role"] == "worker"] == [True, True],
         5, "both workers to report requests")  # two processes' counters to sum

    def complete():
        samples = parse_metrics(metrics_text(node.ports["metrics"]))
        return samples if not missing_metrics(expressions(), samples) else None
    try:
        samples = poll(complete, 10, "every metric to appear")  # the cache manager and the DHT post every second
    except AssertionError:
        samples = parse_metrics(metrics_text(node.ports["metrics"]))
        raise AssertionError("\n".join(missing_metrics(expressions(), samples))) from None
    # The check itself can fail: a name that does not exist is reported.
    assert missing_metrics(["rate(appliance_no_such_metric[5m])"], samples) != []

    scrape_with_prometheus(prometheus, node, downloads, tmp_path)


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def scrape_with_prometheus(prometheus: str, app, downloads: int, tmp_path: Path) -> None:
    """Debian's Prometheus, with the shipped example config and rules, scrapes `app` every second: its API
    returns the summed download counter, and the rules load."""
    web = free_ports(1)[0]
    config = (DEPLOY / "prometheus" / "prometheus.yml.example").read_text()
    config = config.replace("scrape_interval: 15s", "scrape_interval: 1s")
    config = config.replace("/usr/share/reflector-appliance/prometheus/alerts.yml", str(ALERTS))
    targets = "".join(f"          - node{i}.example.net:2112\n" for i in (1, 2, 3))
    assert targets in config
    config = config.replace(targets, f"          - 127.0.0.1:{app.ports['metrics']}\n")
    (tmp_path / "prometheus.yml").write_text(config)
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def query(expr: str):
            url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    result = json.load(response)["data"]["result"]
            except OSError:
                return None
            return [float(r["value"][1]) for r in result]

        summed = 'sum(reflector_blob_download_total{job="reflector-appliance"})'
        try:
            poll(lambda: query(summed) == [float(downloads)], 30, f"Prometheus to report {downloads} downloads")
        except AssertionError:
            raise AssertionError(f"{summed} = {query(summed)}, expected {downloads}; "
                                 f"log:\n{(tmp_path / 'prometheus.log').read_text()[-2000:]}") from None
        assert query('up{job="reflector-appliance"}') == [1.0]
        assert query('reflector_http_blob_download_total{job="reflector-appliance"}') == [float(downloads)]
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/rules", timeout=5) as response:
            groups = json.load(response)["data"]["groups"]
        assert [g["name"] for g in groups] == ["reflector-appliance"]  # the shipped rules load
        assert all(r["health"] != "err" for g in groups for r in g["rules"])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
