"""Microversion negotiation (OpenStack-API-Version and the legacy per-service
header), for the services that use them."""

from __future__ import annotations

import dataclasses
import re

from stackbox.common.errors import BadRequest, NotAcceptable

_VERSION = re.compile(r"^(\d+)\.(\d+)$")


@dataclasses.dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> "Version":
        m = _VERSION.match(text.strip())
        if not m:
            raise BadRequest(f"Invalid microversion {text!r}: expected MAJOR.MINOR "
                             f"or 'latest'", field="OpenStack-API-Version")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def negotiate(headers, *, service_type: str, legacy_header: str | None,
              minimum: Version, maximum: Version) -> Version:
    """The version a request asks for; no header means the minimum."""
    requested = None
    combined = headers.get("openstack-api-version")
    if combined:
        for part in combined.split(","):
            words = part.strip().split()
            if len(words) == 2 and words[0].lower() == service_type:
                requested = words[1]
    if requested is None and legacy_header:
        requested = headers.get(legacy_header.lower())
    if requested is None:
        return minimum
    if requested.strip().lower() == "latest":
        return maximum
    version = Version.parse(requested)
    if not minimum <= version <= maximum:
        raise NotAcceptable(f"Version {version} is not supported by the API. Minimum is "
                            f"{minimum} and maximum is {maximum}.")
    return version


def response_headers(version: Version, *, service_type: str,
                     legacy_header: str | None) -> dict[str, str]:
    headers = {"OpenStack-API-Version": f"{service_type} {version}",
               "Vary": "OpenStack-API-Version"}
    if legacy_header:
        headers[legacy_header] = str(version)
        headers["Vary"] += f", {legacy_header}"
    return headers
