"""Security groups and their rules; the default group of each project."""

from __future__ import annotations

import ipaddress

from sqlalchemy import delete, select

from stackbox.common.errors import Conflict
from stackbox.common.http.context import RequestContext
from stackbox.network import errors, render
from stackbox.network.base import ServiceBase
from stackbox.network.models import (DefaultSecurityGroup, PortSecurityGroup, SecurityGroup,
                                     SecurityGroupRule)

PROTOCOLS = ("ah", "dccp", "egp", "esp", "gre", "icmp", "icmpv6", "igmp", "ipip",
             "ipv6-encap", "ipv6-frag", "ipv6-icmp", "ipv6-nonxt", "ipv6-opts",
             "ipv6-route", "ospf", "pgm", "rsvp", "sctp", "tcp", "udp", "udplite", "vrrp")
PORT_PROTOCOLS = ("tcp", "udp", "sctp", "udplite", "dccp", "6", "17", "132", "136", "33")
ICMP_PROTOCOLS = ("icmp", "icmpv6", "ipv6-icmp", "1", "58")


class SecurityGroupsMixin(ServiceBase):
    def _new_rule(self, s, sg: SecurityGroup, **kw) -> SecurityGroupRule:
        from stackbox.network.networks import new_id_uuid
        rule = SecurityGroupRule(id=new_id_uuid(), security_group_id=sg.id,
                                 project_id=sg.project_id, description=kw.pop("description", ""),
                                 **kw)
        s.add(rule)
        return rule

    def _default_sg(self, s, project_id: str) -> SecurityGroup:
        """The project's default group, created on first need with Neutron's
        rules: all egress, ingress only from members of the group itself."""
        row = s.get(DefaultSecurityGroup, project_id)
        if row is not None:
            return s.get(SecurityGroup, row.security_group_id)
        from stackbox.network.networks import new_id_uuid
        sg = SecurityGroup(id=new_id_uuid(), project_id=project_id, name="default",
                           description="Default security group", tags=[])
        s.add(sg)
        s.flush()
        s.add(DefaultSecurityGroup(project_id=project_id, security_group_id=sg.id))
        s.flush()   # a concurrent first request of the project fails here and retries
        for ethertype in ("IPv4", "IPv6"):
            self._new_rule(s, sg, direction="egress", ethertype=ethertype)
            self._new_rule(s, sg, direction="ingress", ethertype=ethertype,
                           remote_group_id=sg.id)
        s.flush()
        return sg

    def _is_default(self, s, sg: SecurityGroup) -> bool:
        row = s.get(DefaultSecurityGroup, sg.project_id)
        return row is not None and row.security_group_id == sg.id

    def _render_sgs(self, s, groups: list[SecurityGroup]) -> list[dict]:
        rules: dict[str, list] = {g.id: [] for g in groups}
        if groups:
            for r in s.scalars(select(SecurityGroupRule).where(
                    SecurityGroupRule.security_group_id.in_(list(rules))).order_by(
                    SecurityGroupRule.created_at, SecurityGroupRule.id)):
                rules[r.security_group_id].append(r)
        defaults = {row.security_group_id for row in s.scalars(select(DefaultSecurityGroup))}
        return [render.security_group(g, rules[g.id], default=g.id in defaults) for g in groups]

    def _ensure_own_default(self, ctx: RequestContext) -> None:
        if ctx.project_id:
            self._retrying(lambda s, _: self._default_sg(s, ctx.project_id))

    def list_security_groups(self, ctx: RequestContext) -> list[dict]:
        self._ensure_own_default(ctx)
        with self.db.read() as s:
            q = select(SecurityGroup)
            if not ctx.is_admin:
                q = q.where(SecurityGroup.project_id == ctx.project_id)
            return self._render_sgs(s, list(s.scalars(q.order_by(SecurityGroup.created_at,
                                                                 SecurityGroup.id))))

    def get_security_group(self, ctx: RequestContext, sg_id: str) -> dict:
        with self.db.read() as s:
            return self._render_sgs(s, [self._sg(s, ctx, sg_id)])[0]

    def create_security_group(self, ctx: RequestContext, attrs: dict) -> dict:
        def create(s, attempt):
            from stackbox.network.networks import new_id_uuid
            a = dict(attrs)
            project = self._project_for_create(ctx, a)
            self._default_sg(s, project)
            if a.get("name") == "default":
                raise Conflict("Default security group already exists.", field="name")
            self._check_quota(s, project, "security_group")
            sg = SecurityGroup(id=new_id_uuid(), project_id=project, name=a.get("name", ""),
                               description=a.get("description", ""),
                               stateful=a.get("stateful", True), tags=[])
            s.add(sg)
            s.flush()
            for ethertype in ("IPv4", "IPv6"):
                self._new_rule(s, sg, direction="egress", ethertype=ethertype)
            s.flush()
            return self._render_sgs(s, [sg])[0]
        return self._retrying(create)

    def update_security_group(self, ctx: RequestContext, sg_id: str, attrs: dict) -> dict:
        with self.db.transaction() as s:
            sg = self._sg(s, ctx, sg_id)
            if "name" in attrs and attrs["name"] != sg.name and (
                    self._is_default(s, sg) or attrs["name"] == "default"):
                raise Conflict("Updating default security group not allowed.", field="name")
            for key in ("name", "description", "stateful"):
                if key in attrs:
                    setattr(sg, key, attrs[key])
            self._touch(sg)
            return self._render_sgs(s, [sg])[0]

    def delete_security_group(self, ctx: RequestContext, sg_id: str) -> None:
        with self.db.transaction() as s:
            sg = self._sg(s, ctx, sg_id)
            if self._is_default(s, sg) and not ctx.is_admin:
                raise errors.DefaultSecurityGroupDelete(
                    "Insufficient rights for removing default security group.",
                    field="security_group_id")
            port = s.scalar(select(PortSecurityGroup.port_id).where(
                PortSecurityGroup.security_group_id == sg.id))
            if port:
                raise errors.SecurityGroupInUse(
                    f"Security Group {sg.id} in use (by port {port}).",
                    field="security_group_id")
            s.execute(delete(SecurityGroupRule).where(
                SecurityGroupRule.security_group_id == sg.id))
            s.execute(delete(DefaultSecurityGroup).where(
                DefaultSecurityGroup.security_group_id == sg.id))
            s.delete(sg)

    # -- rules ------------------------------------------------------------------------
    def list_security_group_rules(self, ctx: RequestContext) -> list[dict]:
        self._ensure_own_default(ctx)
        with self.db.read() as s:
            q = select(SecurityGroupRule)
            if not ctx.is_admin:
                q = q.where(SecurityGroupRule.project_id == ctx.project_id)
            defaults = {row.security_group_id for row in s.scalars(select(DefaultSecurityGroup))}
            out = []
            for r in s.scalars(q.order_by(SecurityGroupRule.created_at, SecurityGroupRule.id)):
                d = render.security_group_rule(r)
                d["belongs_to_default_sg"] = r.security_group_id in defaults
                out.append(d)
            return out

    def get_security_group_rule(self, ctx: RequestContext, rule_id: str) -> dict:
        with self.db.read() as s:
            return render.security_group_rule(self._rule(s, ctx, rule_id))

    def _rule(self, s, ctx, rule_id: str) -> SecurityGroupRule:
        r = s.get(SecurityGroupRule, rule_id) if rule_id else None
        if r is None or not self._owner(ctx, r):
            raise errors.SecurityGroupRuleNotFound(
                f"Security group rule {rule_id} does not exist", field="security_group_rule_id")
        return r

    def create_security_group_rule(self, ctx: RequestContext, attrs: dict) -> dict:
        a = normalize_rule(dict(attrs))

        def create(s, attempt):
            sg = self._sg(s, ctx, a.pop("security_group_id"))
            a.pop("project_id", None)
            if a.get("remote_group_id"):
                self._sg(s, ctx, a["remote_group_id"])
            self._check_quota(s, sg.project_id, "security_group_rule")
            for r in s.scalars(select(SecurityGroupRule).where(
                    SecurityGroupRule.security_group_id == sg.id)):
                if all(getattr(r, k) == a.get(k) for k in RULE_KEYS):
                    raise errors.SecurityGroupRuleExists(
                        f"Security group rule already exists. Rule id is {r.id}.",
                        field="security_group_rule")
            rule = self._new_rule(s, sg, **a)
            self._touch(sg)
            s.flush()
            return render.security_group_rule(rule)
        return self._retrying(create)

    def delete_security_group_rule(self, ctx: RequestContext, rule_id: str) -> None:
        with self.db.transaction() as s:
            r = self._rule(s, ctx, rule_id)
            self._touch(s.get(SecurityGroup, r.security_group_id))
            s.delete(r)


RULE_KEYS = ("direction", "ethertype", "protocol", "port_range_min", "port_range_max",
             "remote_ip_prefix", "remote_group_id")


def normalize_rule(a: dict) -> dict:
    """Neutron's checks of a rule, pure: names the bad field."""
    for key in ("security_group_id", "direction"):
        if not a.get(key):
            raise errors.InvalidInput(f"Invalid input for {key}. Reason: a required property "
                                      f"is missing.", field=key)
    a.pop("remote_address_group_id", None)
    a.setdefault("ethertype", "IPv4")
    proto = a.get("protocol")
    if proto in (None, "", "any", "0"):
        proto = None
    elif proto.isdigit():
        if not 0 <= int(proto) <= 255:
            raise errors.InvalidInput(f"Invalid input for protocol. Reason: {proto} is not in "
                                      f"range 0 through 255.", field="protocol")
    elif proto not in PROTOCOLS:
        raise errors.InvalidInput(
            f"Security group rule protocol {proto} not supported. Only protocol values "
            f"{list(PROTOCOLS)} and integer representations [0 to 255] are supported.",
            field="protocol")
    a["protocol"] = proto
    lo, hi = a.get("port_range_min"), a.get("port_range_max")
    if proto in PORT_PROTOCOLS:
        if lo is None and hi is not None:
            raise errors.SecurityGroupRuleInvalid(
                "Invalid input for port_range_min. Reason: required with port_range_max.",
                field="port_range_min")
        if lo is not None:
            hi = lo if hi is None else hi
            if lo < 1 or hi < 1 or hi > 65535:
                raise errors.SecurityGroupRuleInvalid(
                    f"Invalid value for port {0 if lo < 1 or hi < 1 else hi}: ports are "
                    f"1-65535.", field="port_range_min" if lo < 1 else "port_range_max")
            if lo > hi:
                raise errors.SecurityGroupRuleInvalid(
                    "For TCP/UDP protocols, port_range_min must be <= port_range_max",
                    field="port_range_min")
    elif proto in ICMP_PROTOCOLS:
        for key, v in (("port_range_min", lo), ("port_range_max", hi)):
            if v is not None and not 0 <= v <= 255:
                raise errors.SecurityGroupRuleInvalid(
                    f"Invalid value for ICMP {'type' if key.endswith('min') else 'code'} "
                    f"({key}): {v}. It must be 0 to 255.", field=key)
        if lo is None and hi is not None:
            raise errors.SecurityGroupRuleInvalid(
                f"ICMP code (port-range-max) {hi} is provided but ICMP type (port-range-min) "
                f"is missing.", field="port_range_min")
    elif lo is not None or hi is not None:
        raise errors.SecurityGroupRuleInvalid(
            f"Invalid protocol {proto} for port range; only tcp, udp, sctp and icmp take "
            f"ports.", field="port_range_min")
    a["port_range_min"], a["port_range_max"] = lo, hi
    prefix = a.get("remote_ip_prefix")
    if prefix is not None and a.get("remote_group_id"):
        raise errors.SecurityGroupRuleInvalid(
            "Only remote_ip_prefix or remote_group_id may be provided.",
            field="remote_ip_prefix")
    if prefix is not None:
        net = ipaddress.ip_network(prefix)
        if f"IPv{net.version}" != a["ethertype"]:
            raise errors.SecurityGroupRuleInvalid(
                f"Conflicting value ethertype {a['ethertype']} for CIDR {prefix}",
                field="remote_ip_prefix")
    return a
