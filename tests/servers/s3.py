"""Throwaway S3-compatible servers: moto's server mode (from the venv) and s3rver (npm, optional).

Both accept any credentials, so authentication is not what these servers test; they test the real
HTTP conversation boto3 has with an S3 implementation.
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

from tests.servers.ports import free_port, port_open, wait_until

TESTS = Path(__file__).resolve().parents[1]
S3RVER = TESTS / ".s3rver" / "node_modules" / ".bin" / "s3rver"
_buckets = itertools.count(1)


@dataclass(frozen=True)
class S3Bucket:
    """Where a test's blobs go: endpoint, credentials, region, bucket."""

    endpoint: str
    aws_id: str
    aws_secret: str
    region: str
    bucket: str
    implementation: str

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.aws_id,
                            aws_secret_access_key=self.aws_secret, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"}))

    def keys(self) -> set[str]:
        listing = self.client().list_objects_v2(Bucket=self.bucket)
        return {item["Key"] for item in listing.get("Contents", [])}

    def config_values(self) -> dict[str, str]:
        """The reflector.go config.json keys that point a store at this bucket."""
        return {"aws_id": self.aws_id, "aws_secret": self.aws_secret, "bucket_region": self.region,
                "bucket_name": self.bucket, "s3_endpoint": self.endpoint}


class S3Server:
    """One server process on a free port; `bucket()` creates a fresh bucket on it."""

    def __init__(self, implementation: str) -> None:
        self.implementation = implementation
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"appliance-{implementation}-"))

    def _command(self) -> tuple[list[str], str, str]:
        if self.implementation == "moto":
            moto = Path(sys.executable).with_name("moto_server")
            return [str(moto), "-H", "127.0.0.1", "-p", str(self.port)], "testing", "testing"
        if self.implementation == "s3rver":
            return ([str(S3RVER), "-a", "127.0.0.1", "-p", str(self.port), "-d", str(self.workdir / "data"),
                     "--silent"], "S3RVER", "S3RVER")
        raise ValueError(self.implementation)

    def start(self) -> None:
        for _ in range(3):
            self.port = free_port()
            command, self.aws_id, self.aws_secret = self._command()
            log = open(self.workdir / "server.log", "ab")
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            wait_until(lambda: self.process.poll() is not None or port_open(self.port), 30,
                       f"{self.implementation} to listen")
            if self.process.poll() is None:
                return
        raise RuntimeError(f"{self.implementation} did not start: {(self.workdir / 'server.log').read_text()[-500:]}")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bucket(self) -> S3Bucket:
        target = S3Bucket(self.endpoint, self.aws_id, self.aws_secret, "us-east-1",
                          f"blobs-{os.getpid()}-{next(_buckets)}", self.implementation)
        target.client().create_bucket(Bucket=target.bucket)
        return target

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def s3rver_available() -> bool:
    return S3RVER.exists() and shutil.which("node") is not None
