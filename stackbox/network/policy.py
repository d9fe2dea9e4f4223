"""Who may do what in the network service: Neutron's default (secure RBAC)
personas. Reading needs the reader role (member and admin imply it); every
change needs member in the project, or admin. Which objects a caller may
see or touch (own project, shared, external) is decided by the service's
queries; attributes only admins may set are marked in schemas.py."""

from __future__ import annotations

from stackbox.common.http.context import RequestContext
from stackbox.common.policy import Policy, Rule


def reader(ctx: RequestContext, target: dict) -> bool:
    return ctx.is_admin or (ctx.project_id is not None
                            and (ctx.has_role("reader") or ctx.has_role("member")))


def member(ctx: RequestContext, target: dict) -> bool:
    return ctx.is_admin or (ctx.project_id is not None and ctx.has_role("member"))


RESOURCES = ("network", "subnet", "port", "router", "floatingip", "security_group",
             "security_group_rule", "tags", "quota")
RULES: dict[str, Rule] = {}
for _r in RESOURCES:
    RULES[f"get_{_r}"] = reader
    for _verb in ("create", "update", "delete"):
        RULES[f"{_verb}_{_r}"] = member
RULES["add_router_interface"] = RULES["remove_router_interface"] = member
RULES["add_extraroutes"] = RULES["remove_extraroutes"] = member

enforce = Policy(RULES, prefix="").enforce
