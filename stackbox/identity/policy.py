"""Who may do what in the identity service.

Roles imply one another: admin ⊃ member ⊃ reader. `admin` on any project is
the cloud administrator, as in Keystone's legacy policy. Other users manage only
themselves: their password, application and EC2 credentials, and read their
own projects. A rule is a function of the caller and the target.
"""

from __future__ import annotations

from stackbox.common.http.context import RequestContext
from stackbox.common.policy import Policy, Rule, admin


def self_or_admin(ctx: RequestContext, target: dict) -> bool:
    return ctx.is_admin or (ctx.user_id is not None and ctx.user_id == target.get("user_id"))


def own_project_or_admin(ctx: RequestContext, target: dict) -> bool:
    return ctx.is_admin or (ctx.project_id is not None
                            and ctx.project_id == target.get("project_id"))


def own_domain_or_admin(ctx: RequestContext, target: dict) -> bool:
    mine = {ctx.domain_id, ctx.project_domain_id, ctx.user_domain_id} - {None}
    return ctx.is_admin or target.get("domain_id") in mine


def authenticated(ctx: RequestContext, target: dict) -> bool:
    return ctx.authenticated


def self_not_restricted_app_cred(ctx: RequestContext, target: dict) -> bool:
    """An application credential may not mint further credentials unless it
    was created unrestricted (Keystone's rule)."""
    if ctx.app_cred_id and not ctx.app_cred_unrestricted:
        return False
    return self_or_admin(ctx, target)


RULES: dict[str, Rule] = {
    # domains
    "list_domains": admin, "get_domain": own_domain_or_admin, "create_domain": admin,
    "update_domain": admin, "delete_domain": admin,
    # projects
    "list_projects": admin, "get_project": own_project_or_admin, "create_project": admin,
    "update_project": admin, "delete_project": admin,
    "list_user_projects": self_or_admin,
    # users
    "list_users": admin, "get_user": self_or_admin, "create_user": admin,
    "update_user": admin, "delete_user": admin, "change_password": self_or_admin,
    # groups
    "list_groups": admin, "get_group": admin, "create_group": admin, "update_group": admin,
    "delete_group": admin, "list_group_users": admin, "add_user_to_group": admin,
    "remove_user_from_group": admin, "check_user_in_group": admin,
    "list_user_groups": self_or_admin,
    # roles and assignments
    "list_roles": admin, "get_role": admin, "create_role": admin, "update_role": admin,
    "delete_role": admin, "list_implied_roles": admin, "create_implied_role": admin,
    "delete_implied_role": admin, "list_role_inference_rules": admin,
    "list_grants": admin, "check_grant": admin, "create_grant": admin, "revoke_grant": admin,
    "list_role_assignments": admin,
    # catalog: readable by anyone with a token
    "list_regions": authenticated, "get_region": authenticated,
    "list_services": authenticated, "get_service": authenticated,
    "list_endpoints": authenticated, "get_endpoint": authenticated,
    # credentials
    "list_application_credentials": self_or_admin, "get_application_credential": self_or_admin,
    "create_application_credential": self_not_restricted_app_cred,
    "delete_application_credential": self_or_admin,
    "ec2_list_credentials": self_or_admin, "ec2_get_credential": self_or_admin,
    "ec2_create_credential": self_not_restricted_app_cred,
    "ec2_delete_credential": self_or_admin,
}


enforce = Policy(RULES, prefix="identity:").enforce
