"""End-to-end tests that boot real guests under QEMU (TCG here)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: boots real guests with QEMU (slow)")


def _cache_root(config) -> Path:
    """Image cache shared across runs so only the first run downloads."""
    env = os.environ.get("STACKBOX_TEST_CACHE")
    if env:
        return Path(env)
    fixed = Path("/var/cache/stackbox-test")
    try:
        fixed.mkdir(parents=True, exist_ok=True)
        if os.access(fixed, os.W_OK):
            return fixed
    except OSError:
        pass
    return Path(config.cache.mkdir("stackbox-guests"))


@pytest.fixture(scope="session")
def guest_cache(request) -> Path:
    return _cache_root(request.config)


@pytest.fixture(scope="session")
def tiny_image(guest_cache):
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not available to build the tiny guest")
    from stackbox.guest.tiny import build_tiny
    return build_tiny(guest_cache, progress=lambda line: print(line, flush=True))


@pytest.fixture(scope="session")
def debian_image(guest_cache):
    from stackbox.guest.debian import build_debian
    from tests.e2e.guests import QEMU
    if os.geteuid() != 0:
        pytest.skip("building the debian guest needs root")
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 not installed")
    return build_debian(guest_cache, progress=lambda line: print(line, flush=True))


@pytest.fixture
def workdir():
    import tempfile
    path = Path(tempfile.mkdtemp(prefix="sbx-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def boot(workdir, request):
    """boot(image, extra_argv, wrap=[]) -> Guest. Every guest is killed at
    teardown, pass or fail, before the work dir goes (fixture order)."""
    from tests.e2e.guests import QEMU, Guest, qemu_argv
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 not installed")
    guests = []

    def _boot(image, extra, wrap=()):
        log = workdir / f"serial-{len(guests)}.log"
        guest = Guest([*wrap, *qemu_argv(image, log, list(extra))], log)
        guests.append(guest)
        return guest

    def _cleanup():
        for guest in guests:
            guest.kill()
    request.addfinalizer(_cleanup)
    return _boot
