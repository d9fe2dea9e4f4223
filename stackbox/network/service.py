"""The network service (Neutron v2.0 semantics): one class assembled from
its parts, plus quotas, tags and the extension list. Every public method
takes the caller's RequestContext first and returns plain dicts with
Neutron's field names; visibility decides existence (404), policy what the
caller may do (403)."""

from __future__ import annotations

from sqlalchemy import delete, select

from stackbox.common.db import Database
from stackbox.common.errors import NotFound
from stackbox.common.http.context import RequestContext
from stackbox.network import errors
from stackbox.network.base import DEFAULT_QUOTAS, QUOTA_MODELS
from stackbox.network.binding import BindingMixin
from stackbox.network.models import (FloatingIp, Network, Port, Quota, Router, SecurityGroup,
                                     Subnet)
from stackbox.network.networks import NetworksMixin
from stackbox.network.ports import PortsMixin
from stackbox.network.routers import RoutersMixin
from stackbox.network.secgroups import SecurityGroupsMixin

# collection name -> (model, getter for the caller's view)
TAGGABLE = {"networks": (Network, "_network"), "subnets": (Subnet, "_subnet"),
            "ports": (Port, "_port"), "routers": (Router, "_router"),
            "floatingips": (FloatingIp, "_fip"), "security-groups": (SecurityGroup, "_sg")}

# (alias, name, description): only what this service really implements
EXTENSIONS = (
    ("external-net", "Neutron external network",
     "Adds external network attribute to network resource."),
    ("router", "Neutron L3 Router",
     "Router abstraction for basic L3 forwarding between L2 Neutron networks and access "
     "to external networks via a NAT gateway."),
    ("ext-gw-mode", "Neutron L3 Configurable external gateway mode",
     "Extension of the router abstraction for specifying whether SNAT should occur on the "
     "external gateway"),
    ("extraroute", "Neutron Extra Route", "Extra routes configuration for L3 router"),
    ("extraroute-atomic", "Atomically add/remove extra routes",
     "Edit extra routes of a router on server side by atomically adding/removing extra "
     "routes"),
    ("security-group", "security-group", "The security groups extension."),
    ("stateful-security-group", "Stateful security group",
     "Indicates if the security group is stateful or not"),
    ("port-security", "Port Security", "Provides port security"),
    ("allowed-address-pairs", "Allowed Address Pairs", "Provides allowed address pairs"),
    ("binding", "Port Binding",
     "Expose port bindings of a virtual port to external application"),
    ("provider", "Provider Network", "Expose mapping of virtual networks to physical networks"),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("quotas", "Quota management support", "Expose functions for quotas management per project"),
    ("quota_details", "Quota details management support",
     "Expose functions for quotas usage statistics per project"),
    ("standard-attr-tag", "Tag support for resources with standard attribute",
     "Enables to set tag on resources with standard attribute."),
    ("standard-attr-description", "standard-attr-description",
     "Extension to add descriptions to standard attributes"),
    ("standard-attr-timestamp", "Resource timestamps",
     "Adds created_at and updated_at fields to all Neutron resources that have Neutron "
     "standard attributes."),
    ("standard-attr-revisions", "Resource revision numbers",
     "This extension will display the revision number of neutron resources."),
    ("project-id", "project_id field enabled",
     "Extension that indicates that project_id field is enabled."),
    ("fip-port-details", "Floating IP Port Details Extension",
     "Add port_details attribute to Floating IP resource"),
    ("sorting", "Sorting support", "Enables sorting support"),
    ("pagination", "Pagination support", "Enables pagination support"),
    ("filter-validation", "Filter parameters validation",
     "Provides validation on filter parameters."),
)


class NetworkService(NetworksMixin, PortsMixin, RoutersMixin, SecurityGroupsMixin,
                     BindingMixin):
    def __init__(self, db: Database, settings):
        super().__init__(db, settings)

    # -- extensions -------------------------------------------------------------------
    @staticmethod
    def list_extensions() -> list[dict]:
        return [{"alias": a, "name": n, "description": d, "links": [],
                 "updated": "2026-11-21T00:00:00-00:00"} for a, n, d in EXTENSIONS]

    def get_extension(self, alias: str) -> dict:
        for ext in self.list_extensions():
            if ext["alias"] == alias:
                return ext
        raise errors.ExtensionNotFound(f"Extension with alias {alias} does not exist",
                                       field="alias")

    # -- tags -------------------------------------------------------------------------
    def _tagged(self, s, ctx, collection: str, resource_id: str):
        if collection not in TAGGABLE:
            raise NotFound(f"Resource collection {collection} does not support tags.")
        _, getter = TAGGABLE[collection]
        obj = getattr(self, getter)(s, ctx, resource_id)
        if not self._owner(ctx, obj):
            raise errors.PolicyNotAuthorized("(update_tags) is disallowed by policy")
        return obj

    def get_tags(self, ctx, collection: str, resource_id: str) -> list[str]:
        with self.db.read() as s:
            _, getter = TAGGABLE.get(collection, (None, None))
            if getter is None:
                raise NotFound(f"Resource collection {collection} does not support tags.")
            return list(getattr(self, getter)(s, ctx, resource_id).tags or [])

    def get_tag(self, ctx, collection: str, resource_id: str, tag: str) -> None:
        if tag not in self.get_tags(ctx, collection, resource_id):
            raise NotFound(f"Tag {tag} could not be found.")

    def set_tags(self, ctx, collection: str, resource_id: str, tags: list[str]) -> list[str]:
        with self.db.transaction() as s:
            obj = self._tagged(s, ctx, collection, resource_id)
            obj.tags = sorted(set(tags))
            self._touch(obj)
            return list(obj.tags)

    def add_tag(self, ctx, collection: str, resource_id: str, tag: str) -> None:
        with self.db.transaction() as s:
            obj = self._tagged(s, ctx, collection, resource_id)
            if tag not in (obj.tags or []):
                obj.tags = sorted(set(obj.tags or []) | {tag})
                self._touch(obj)

    def remove_tag(self, ctx, collection: str, resource_id: str, tag: str) -> None:
        with self.db.transaction() as s:
            obj = self._tagged(s, ctx, collection, resource_id)
            if tag not in (obj.tags or []):
                raise NotFound(f"Tag {tag} could not be found.")
            obj.tags = [t for t in obj.tags if t != tag]
            self._touch(obj)

    # -- quotas -----------------------------------------------------------------------
    def _quota_target(self, ctx: RequestContext, project_id: str, *, write: bool) -> None:
        if not ctx.is_admin and (write or project_id != ctx.project_id):
            raise errors.PolicyNotAuthorized(
                f"({'update' if write else 'get'}_quota) is disallowed by policy")

    def get_quota(self, ctx, project_id: str) -> dict[str, int]:
        self._quota_target(ctx, project_id, write=False)
        with self.db.read() as s:
            return {r: self._limit(s, project_id, r) for r in DEFAULT_QUOTAS}

    def get_quota_details(self, ctx, project_id: str) -> dict[str, dict]:
        self._quota_target(ctx, project_id, write=False)
        with self.db.read() as s:
            return {r: {"limit": self._limit(s, project_id, r),
                        "used": self._used(s, project_id, r) if r in QUOTA_MODELS else 0,
                        "reserved": 0} for r in DEFAULT_QUOTAS}

    @staticmethod
    def default_quota() -> dict[str, int]:
        return dict(DEFAULT_QUOTAS)

    def list_quotas(self, ctx) -> list[dict]:
        if not ctx.is_admin:
            raise errors.PolicyNotAuthorized("(get_quota) is disallowed by policy")
        with self.db.read() as s:
            projects = sorted(set(s.scalars(select(Quota.project_id))))
            return [{"project_id": p, "tenant_id": p,
                     **{r: self._limit(s, p, r) for r in DEFAULT_QUOTAS}} for p in projects]

    def update_quota(self, ctx, project_id: str, limits: dict[str, int]) -> dict[str, int]:
        self._quota_target(ctx, project_id, write=True)
        with self.db.transaction() as s:
            for resource, limit in limits.items():
                row = s.get(Quota, (project_id, resource))
                if row is None:
                    s.add(Quota(project_id=project_id, resource=resource, limit=limit))
                else:
                    row.limit = limit
            s.flush()
            return {r: self._limit(s, project_id, r) for r in DEFAULT_QUOTAS}

    def delete_quota(self, ctx, project_id: str) -> None:
        self._quota_target(ctx, project_id, write=True)
        with self.db.transaction() as s:
            s.execute(delete(Quota).where(Quota.project_id == project_id))
