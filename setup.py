"""Packaging for the reflector appliance (`prism`, `appliancectl`)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("appliance/__init__.py").read_text()).group(1)

setup(
    name="reflector-appliance",
    version=VERSION,
    description="A Python re-implementation of LBRY's reflector.go (prism) as a Debian/systemd appliance",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["appliance", "appliance.*", "workers", "workers.*"]),
    package_data={"appliance": ["schema.sql"]},
    install_requires=[
        "gevent>=24.2",
        "pymysql>=1.1",
        "requests>=2.31",
        "boto3>=1.34",
        "prometheus-client>=0.20",
        "msgpack>=1.0",
        "cryptography>=42",
        "tqdm>=4.66",
        "qh3>=2.1,<3",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",  # scripts/test runs the suite in several processes (mostly waiting on servers)
            "moto[server]>=5.0",
            "ruff>=0.6",
            "aioquic>=1.2",  # the independent HTTP/3 stack the tests talk to ours with
        ],
    },
    entry_points={
        "console_scripts": [
            "prism=appliance.cli.prism:main",
            "appliancectl=appliance.cli.appliancectl:main",
        ],
    },
)
