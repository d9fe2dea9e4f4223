"""Effective roles: direct and group assignments, with implied roles
(admin ⊃ member ⊃ reader) expanded. Used by token validation and by the
identity service alike."""

from __future__ import annotations

from typing import Iterable

from sqlalchemy import or_, select

from stackbox.identity.models import Assignment, GroupMembership, ImpliedRole, Role


def implication_rules(s) -> dict[str, set[str]]:
    """prior role id -> the role ids it directly implies (one query)."""
    rules: dict[str, set[str]] = {}
    for prior, implied in s.execute(select(ImpliedRole.prior_role_id,
                                           ImpliedRole.implied_role_id)):
        rules.setdefault(prior, set()).add(implied)
    return rules


def expand(rules: dict[str, set[str]], role_ids: Iterable[str]) -> set[str]:
    """role ids plus every role they imply, transitively (pure)."""
    seen, todo = set(), list(role_ids)
    while todo:
        rid = todo.pop()
        if rid not in seen:
            seen.add(rid)
            todo.extend(rules.get(rid, ()))
    return seen


def expand_implied(s, role_ids: Iterable[str]) -> set[str]:
    return expand(implication_rules(s), role_ids)


def effective_roles(s, user_id: str, project_id: str | None, domain_id: str | None) -> list[Role]:
    target_type, target_id = ("project", project_id) if project_id else ("domain", domain_id)
    group_ids = list(s.scalars(select(GroupMembership.group_id).where(
        GroupMembership.user_id == user_id)))
    actors = or_(
        (Assignment.actor_type == "user") & (Assignment.actor_id == user_id),
        (Assignment.actor_type == "group") & (Assignment.actor_id.in_(group_ids)))
    direct = set(s.scalars(select(Assignment.role_id).where(
        actors, Assignment.target_type == target_type, Assignment.target_id == target_id)))
    if not direct:
        return []
    ids = expand_implied(s, direct)
    return list(s.scalars(select(Role).where(Role.id.in_(ids)).order_by(Role.name)))
