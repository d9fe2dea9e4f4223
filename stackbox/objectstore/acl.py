"""Container ACLs, Swift/keystoneauth style. Pure functions: who may read or
write a container, given its X-Container-Read / X-Container-Write values.

Elements of an ACL (comma separated):
    .r:*  .r:<referrer>  .r:-<referrer>   anonymous reads by HTTP Referer
    .rlistings                            with a .r match, listings too
    <project>:<user>  <project>:*  *:<user>  *:*   ids or names of token holders
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from stackbox.common.errors import BadRequest


@dataclass(frozen=True)
class Caller:
    """The parts of a token ACLs can name; all None for an anonymous request."""
    project_id: str | None = None
    project_name: str | None = None
    user_id: str | None = None
    user_name: str | None = None


def parse(value: str | None, *, header: str) -> tuple[str, ...]:
    """Normalise an ACL header value; BadRequest naming the header if bad."""
    if not value:
        return ()
    items = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.startswith(".r:") or item.startswith(".ref:") or item.startswith(".referrer:"):
            target = item.split(":", 1)[1].strip()
            if not target or target in ("-",):
                raise BadRequest(f"{header}: referrer element {item!r} names no host",
                                 field=header)
            items.append(".r:" + target)
        elif item in (".rlistings",):
            items.append(item)
        elif item.startswith("."):
            raise BadRequest(f"{header}: unknown element {item!r}; allowed: .r:<referrer>, "
                             f".rlistings, <project>:<user>", field=header)
        elif ":" in item:
            items.append(item)
        else:
            raise BadRequest(f"{header}: element {item!r} must be <project>:<user> "
                             f"(ids, names or *)", field=header)
    if header.lower().endswith("write") and any(i.startswith(".r") for i in items):
        raise BadRequest(f"{header}: referrer elements are only allowed in read ACLs",
                         field=header)
    return tuple(items)


def referrer_allowed(acl: tuple[str, ...], referrer: str | None) -> bool:
    """Swift's referrer_allowed: later elements override earlier ones."""
    host = urlparse(referrer).hostname or "" if referrer else ""
    allowed = False
    for item in acl:
        if not item.startswith(".r:"):
            continue
        target = item[3:]
        negate = target.startswith("-")
        target = target[1:] if negate else target
        if target == "*" or (host and (host == target or
                                       (target.startswith(".") and host.endswith(target)))):
            allowed = not negate
    return allowed


def user_allowed(acl: tuple[str, ...], caller: Caller) -> bool:
    if caller.user_id is None:
        return False
    for item in acl:
        if item.startswith("."):
            continue
        project, _, user = item.partition(":")
        if project not in ("*", caller.project_id, caller.project_name):
            continue
        if user in ("*", caller.user_id, caller.user_name):
            return True
    return False


def can_read(acl: tuple[str, ...], caller: Caller, *, referrer: str | None,
             listing: bool) -> bool:
    if user_allowed(acl, caller):
        return True
    if referrer_allowed(acl, referrer):
        return not listing or ".rlistings" in acl
    return False
