"""The networks `stackbox up` creates, like DevStack: `public` (admin-owned,
external, flat on a bridge_mappings physnet), `private` for the demo project
and `router1` joining them with SNAT. Each is looked up by name and project
first, so a second `up` creates nothing."""

from __future__ import annotations

from stackbox.common.http.context import RequestContext
from stackbox.network.service import NetworkService


def ensure_default_networks(svc: NetworkService, settings, *, admin_project: str,
                            demo_project: str) -> list[str]:
    """Create what is missing; returns the names created."""
    cfg = settings.network
    ctx = RequestContext(request_id="req-bootstrap", project_id=admin_project,
                         roles=("admin", "member", "reader"))
    created: list[str] = []

    def find(items, name, project):
        return next((i for i in items if i["name"] == name and i["project_id"] == project),
                    None)

    nets = svc.list_networks(ctx)
    public = find(nets, "public", admin_project)
    if public is None:
        public = svc.create_network(ctx, {
            "name": "public", "router:external": True, "project_id": admin_project,
            "provider:network_type": "flat",
            "provider:physical_network": cfg.public_physical_network})
        created.append("public")
    subnets = svc.list_subnets(ctx)
    public_subnet = find(subnets, "public-subnet", admin_project)
    if public_subnet is None:
        public_subnet = svc.create_subnet(ctx, {
            "name": "public-subnet", "network_id": public["id"], "cidr": cfg.public_cidr,
            "ip_version": 4, "enable_dhcp": False, "project_id": admin_project})
        created.append("public-subnet")
    private = find(nets, "private", demo_project)
    if private is None:
        private = svc.create_network(ctx, {"name": "private", "project_id": demo_project})
        created.append("private")
    private_subnet = find(subnets, "private-subnet", demo_project)
    if private_subnet is None:
        private_subnet = svc.create_subnet(ctx, {
            "name": "private-subnet", "network_id": private["id"], "cidr": cfg.private_cidr,
            "ip_version": 4, "project_id": demo_project})
        created.append("private-subnet")
    router = find(svc.list_routers(ctx), "router1", demo_project)
    if router is None:
        router = svc.create_router(ctx, {
            "name": "router1", "project_id": demo_project,
            "external_gateway_info": {"network_id": public["id"], "enable_snat": True}})
        created.append("router1")
    attached = svc.list_ports(ctx, device_id=router["id"],
                              device_owner="network:router_interface")
    if not any(ip["subnet_id"] == private_subnet["id"]
               for p in attached for ip in p["fixed_ips"]):
        svc.add_router_interface(ctx, router["id"], subnet_id=private_subnet["id"])
        created.append("router1 interface on private-subnet")
    return created
