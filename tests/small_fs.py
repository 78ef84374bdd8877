"""Test helper: a small real filesystem (a tmpfs, else a loop-mounted ext4 image) to fill up.

    from tests.small_fs import small_fs  # noqa: F401   (registers the `small_fs` fixture)

    def test_x(small_fs):
        root = small_fs(10)            # a 10 MiB filesystem mounted at the returned Path; unmounted afterwards

Mounting needs root; without it (or without tmpfs and loop devices) the test is skipped with the reason.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def mount_small(directory: Path, mib: int) -> str:
    """Mount a `mib` MiB filesystem at `directory`; returns its kind; pytest.skip when neither kind mounts."""
    directory.mkdir(parents=True, exist_ok=True)
    tmpfs = _run("mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(directory))
    if tmpfs.returncode == 0:
        return "tmpfs"
    image = directory.parent / f"{directory.name}.img"
    with open(image, "wb") as f:
        f.truncate(mib * 1024 * 1024)
    mkfs = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    loop = _run("mount", "-o", "loop", str(image), str(directory)) if mkfs.returncode == 0 else mkfs
    if loop.returncode == 0:
        return "ext4"
    pytest.skip(f"cannot mount a small filesystem (tmpfs: {tmpfs.stderr.strip() or tmpfs.returncode}; "
                f"loop: {loop.stderr.strip() or loop.returncode}): mounting needs root")


def unmount(directory: Path) -> None:
    if _run("umount", str(directory)).returncode != 0:
        _run("umount", "-l", str(directory))  # still busy (a process that outlived its test): detach it


def fill(root: Path, name: str = "filler") -> Path:
    """Take every free byte of the filesystem with one file; returns it (delete it to free the room)."""
    path = root / name
    chunk = b"\0" * (256 * 1024)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return path


def free_bytes(root: Path) -> int:
    st = os.statvfs(root)
    return st.f_bavail * st.f_frsize


@pytest.fixture(name="small_fs")
def small_fs_fixture(tmp_path: Path):
    """A factory: small_fs(mib) -> Path of a freshly mounted filesystem; every one is unmounted at teardown."""
    mounted: list[Path] = []

    def mount(mib: int = 10) -> Path:
        directory = tmp_path / f"fs{len(mounted)}"
        mount_small(directory, mib)
        mounted.append(directory)
        return directory

    yield mount
    for directory in reversed(mounted):
        unmount(directory)
