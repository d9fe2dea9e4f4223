"""Who may do what in the image service: Glance's default (secure RBAC) rules.

admin may do anything. Otherwise the owner's project manages its images with
the member role; reader can see and download but not change. Making an image
public is admin-only (`publicize_image`); community is allowed to owners, as
in Glance (`communitize_image`). A project an image is shared with answers for
its own membership only. Visibility (who may know an image exists) is decided
by the service's queries; these rules come after it.
"""

from __future__ import annotations

from stackbox.common.http.context import RequestContext
from stackbox.common.policy import Policy, Rule, admin


def project_member(ctx: RequestContext, target: dict) -> bool:
    """member (or admin) role in the caller's own project."""
    return ctx.is_admin or (ctx.project_id is not None and ctx.has_role("member"))


def owner_member(ctx: RequestContext, target: dict) -> bool:
    return ctx.is_admin or (ctx.has_role("member") and ctx.project_id is not None
                            and ctx.project_id == target.get("owner"))


def reader(ctx: RequestContext, target: dict) -> bool:
    return ctx.is_admin or ctx.has_role("reader") or ctx.has_role("member")


def shared_member(ctx: RequestContext, target: dict) -> bool:
    return ctx.is_admin or (ctx.has_role("member") and ctx.project_id is not None
                            and ctx.project_id == target.get("member_id"))


def owner_or_member_reader(ctx: RequestContext, target: dict) -> bool:
    return ctx.is_admin or (reader(ctx, target) and ctx.project_id in (
        target.get("owner"), target.get("member_id")))


RULES: dict[str, Rule] = {
    "add_image": project_member, "get_image": reader, "get_images": reader,
    "modify_image": owner_member, "delete_image": owner_member,
    "publicize_image": admin, "communitize_image": owner_member,
    "set_image_owner": admin,
    "upload_image": owner_member, "download_image": reader,
    "deactivate": owner_member, "reactivate": owner_member,
    "add_member": owner_member, "delete_member": owner_member,
    "get_members": owner_or_member_reader, "get_member": owner_or_member_reader,
    "modify_member": shared_member,
}


enforce = Policy(RULES, prefix="").enforce
