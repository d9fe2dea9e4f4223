"""The policy mechanism every service shares: a table of rules (functions of
the caller and the target) and one `enforce`. Each service keeps its own table
in its policy.py; the rules themselves are what differ."""

from __future__ import annotations

from typing import Callable

from stackbox.common.errors import Forbidden
from stackbox.common.http.context import RequestContext

Rule = Callable[[RequestContext, dict], bool]


def admin(ctx: RequestContext, target: dict) -> bool:
    return ctx.is_admin


class Policy:
    def __init__(self, rules: dict[str, Rule], *, prefix: str = ""):
        self.rules = rules
        self.prefix = prefix  # "identity:" as Keystone names its actions

    def enforce(self, ctx: RequestContext, action: str, target: dict | None = None) -> None:
        if not self.rules[action](ctx, target or {}):
            raise Forbidden(f"You are not authorized to perform the requested action: "
                            f"{self.prefix}{action}.")
