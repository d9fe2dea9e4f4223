"""openstacksdk connections as admin and as demo, for the API tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def admin(cloud):
    conn = cloud.sdk("stackbox")
    yield conn
    conn.close()


@pytest.fixture
def demo(cloud):
    conn = cloud.sdk("stackbox-demo")
    yield conn
    conn.close()
