"""Nova response bodies, field for field, per microversion."""

from __future__ import annotations

import hashlib

from stackbox.common.http.microversion import Version
from stackbox.compute import states
from stackbox.compute.scheduler import host_is_up

V = Version


def iso(ts) -> str | None:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ") if ts else None


def iso_micro(ts) -> str | None:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f") if ts else None


def link(base: str, kind: str, ident: str, project: str | None = None) -> list[dict]:
    return [{"rel": "self", "href": f"{base}/v2.1/{kind}/{ident}"},
            {"rel": "bookmark", "href": f"{base}/{kind}/{ident}"}]


def host_id_hash(project_id: str, host_id: str | None) -> str:
    """Nova's hostId: sha224 of project + host, so projects can tell servers on
    the same host apart without learning the host."""
    if not host_id:
        return ""
    return hashlib.sha224((project_id + host_id).encode()).hexdigest()


def flavor(f, base: str, mv: Version, *, detail: bool = True, is_admin: bool = False) -> dict:
    body = {"id": f.id, "name": f.name, "links": link(base, "flavors", f.id)}
    if mv >= V(2, 55):
        body["description"] = f.description
    if not detail:
        return body
    body.update({"ram": f.ram, "disk": f.disk, "vcpus": f.vcpus,
                 "OS-FLV-EXT-DATA:ephemeral": f.ephemeral, "swap": f.swap or "",
                 "rxtx_factor": f.rxtx_factor, "os-flavor-access:is_public": f.is_public,
                 "OS-FLV-DISABLED:disabled": f.disabled})
    if mv >= V(2, 75):
        body["swap"] = f.swap or 0
    if mv >= V(2, 61):
        body["extra_specs"] = dict(f.extra_specs or {})
    return body


def keypair(kp, mv: Version, *, private_key: str | None = None, detail: bool = True,
            in_list: bool = False) -> dict:
    body = {"name": kp.name, "public_key": kp.public_key, "fingerprint": kp.fingerprint}
    if mv >= V(2, 2):
        body["type"] = kp.type
    if private_key is not None:
        body["private_key"] = private_key
    if detail and not in_list:
        body.update({"user_id": kp.user_id, "created_at": iso_micro(kp.created_at),
                     "deleted": False, "deleted_at": None, "updated_at": None, "id": 0})
    if private_key is not None or (not detail):
        body["user_id"] = kp.user_id
    return body


def _server_flavor(server, base: str, mv: Version) -> dict:
    f = server.flavor
    if mv >= V(2, 47):
        return {"vcpus": f["vcpus"], "ram": f["ram"], "disk": f["disk"],
                "ephemeral": f["ephemeral"], "swap": f["swap"], "original_name": f["name"],
                "extra_specs": dict(f.get("extra_specs") or {})}
    return {"id": f["id"], "links": [{"rel": "bookmark", "href": f"{base}/flavors/{f['id']}"}]}


def _server_image(server, base: str, mv: Version):
    if not server.image_id:
        return ""
    body = {"id": server.image_id,
            "links": [{"rel": "bookmark", "href": f"{base}/images/{server.image_id}"}]}
    if mv >= V(2, 98):
        body["properties"] = dict((server.image_meta or {}).get("properties") or {})
    return body


def server(s, *, base: str, mv: Version, is_admin: bool, host=None, addresses: dict | None = None,
           groups: list[str] | None = None, detail: bool = True) -> dict:
    body = {"id": s.id, "name": s.name, "links": link(base, "servers", s.id)}
    if not detail:
        return body
    body.update({
        "status": states.status(s.vm_state, s.task_state),
        "tenant_id": s.project_id, "user_id": s.user_id, "metadata": dict(s.metadata_ or {}),
        "hostId": host_id_hash(s.project_id, s.host_id),
        "image": _server_image(s, base, mv), "flavor": _server_flavor(s, base, mv),
        "created": iso(s.created_at), "updated": iso(s.updated_at),
        "addresses": addresses or {}, "accessIPv4": s.access_ipv4, "accessIPv6": s.access_ipv6,
        "progress": 0, "key_name": s.key_name, "config_drive": "True" if s.config_drive else "",
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": s.availability_zone or "",
        "OS-EXT-STS:task_state": s.task_state, "OS-EXT-STS:vm_state": s.vm_state,
        "OS-EXT-STS:power_state": s.power_state,
        "OS-SRV-USG:launched_at": iso_micro(s.launched_at), "OS-SRV-USG:terminated_at": None,
        "os-extended-volumes:volumes_attached": [],
        "security_groups": [{"name": g} for g in (s.security_groups or [])] or None,
    })
    if body["security_groups"] is None:
        del body["security_groups"]
    if s.vm_state == states.ERROR and s.fault:
        fault = {"code": s.fault.get("code", 500), "message": s.fault.get("message", ""),
                 "created": s.fault.get("created", iso(s.updated_at))}
        if is_admin or fault["code"] != 500:
            fault["details"] = s.fault.get("details", "")
        body["fault"] = fault
    if is_admin:
        body.update({"OS-EXT-SRV-ATTR:host": host.hostname if host else None,
                     "OS-EXT-SRV-ATTR:hypervisor_hostname": host.hostname if host else None,
                     "OS-EXT-SRV-ATTR:instance_name": f"instance-{s.id[:8]}"})
        if mv >= V(2, 3):
            props = (s.image_meta or {}).get("properties") or {}
            body.update({"OS-EXT-SRV-ATTR:reservation_id": s.reservation_id,
                         "OS-EXT-SRV-ATTR:launch_index": s.launch_index,
                         "OS-EXT-SRV-ATTR:kernel_id": props.get("kernel_id", ""),
                         "OS-EXT-SRV-ATTR:ramdisk_id": props.get("ramdisk_id", ""),
                         "OS-EXT-SRV-ATTR:root_device_name": "/dev/vda",
                         "OS-EXT-SRV-ATTR:user_data": s.user_data,
                         "OS-EXT-SRV-ATTR:hostname": s.hostname})
    if mv >= V(2, 3):
        body["os-extended-volumes:volumes_attached"] = []
    if mv >= V(2, 9):
        body["locked"] = bool(s.locked)
    if mv >= V(2, 16) and is_admin:
        body["host_status"] = "UP" if host is not None else ""
    if mv >= V(2, 19):
        body["description"] = s.description
    if mv >= V(2, 26):
        body["tags"] = list(s.tags or [])
    if mv >= V(2, 63):
        body["trusted_image_certificates"] = None
    if mv >= V(2, 71) and groups is not None:
        body["server_groups"] = groups
    if mv >= V(2, 73):
        body["locked_reason"] = s.locked_reason
    if mv >= V(2, 90) and not is_admin:
        body["OS-EXT-SRV-ATTR:hostname"] = s.hostname
    if mv >= V(2, 96):
        body["pinned_availability_zone"] = s.requested_az or None
    if mv >= V(2, 100):
        body["scheduler_hints"] = dict(s.scheduler_hints or {})
    return body


def action(a, *, mv: Version, is_admin: bool, with_events: bool) -> dict:
    body = {"action": a.action, "instance_uuid": a.server_id, "request_id": a.request_id,
            "user_id": a.user_id, "project_id": a.project_id,
            "start_time": iso_micro(a.start_time), "message": a.message}
    if mv >= V(2, 58):
        body["updated_at"] = iso_micro(a.updated_at)
    if with_events:
        events = []
        for e in a.events:
            ev = {"event": e["event"], "start_time": e["start_time"],
                  "finish_time": e["finish_time"], "result": e["result"]}
            if is_admin:
                ev["traceback"] = e.get("traceback")
            if mv >= V(2, 62):
                ev["hostId"] = host_id_hash(a.project_id, e.get("hostId"))
                if is_admin:
                    ev["host"] = e.get("host")
            if mv >= V(2, 84):
                ev["details"] = None if e["result"] == "Success" else "Error"
            events.append(ev)
        body["events"] = events
    return body


def server_group(g, mv: Version) -> dict:
    body = {"id": g.id, "name": g.name, "members": list(g.members), "metadata": {}}
    if mv >= V(2, 64):
        body.update({"policy": g.policy, "rules": dict(g.rules or {})})
        del body["metadata"]
    else:
        body["policies"] = [g.policy]
    if mv >= V(2, 13):
        body.update({"project_id": g.project_id, "user_id": g.user_id})
    return body


def hypervisor(h, used, mv: Version, *, detail: bool, servers: list | None = None,
               uptime: str | None = None) -> dict:
    up = "up" if host_is_up(h) else "down"
    ident = h.id if mv >= V(2, 53) else abs(hash(h.id)) % (10 ** 6)
    body = {"id": ident, "hypervisor_hostname": h.hostname, "state": up,
            "status": "disabled" if h.disabled else "enabled"}
    if servers is not None and mv >= V(2, 53):
        body["servers"] = servers
    if not detail:
        return body
    vcpus_used, mem_used, disk_used, count = used
    body.update({"host_ip": h.host_ip, "hypervisor_type": h.hypervisor_type,
                 "hypervisor_version": h.hypervisor_version,
                 "service": {"host": h.hostname,
                             "id": h.id if mv >= V(2, 53) else ident,
                             "disabled_reason": h.disabled_reason}})
    if mv < V(2, 88):
        body.update({"vcpus": h.vcpus, "memory_mb": h.memory_mb, "local_gb": h.disk_gb,
                     "vcpus_used": vcpus_used, "memory_mb_used": mem_used + h.reserved_memory_mb,
                     "local_gb_used": disk_used, "free_ram_mb":
                         h.memory_mb - mem_used - h.reserved_memory_mb,
                     "free_disk_gb": h.disk_gb - disk_used, "current_workload": 0,
                     "running_vms": count, "disk_available_least": h.disk_gb - disk_used,
                     "cpu_info": {} if mv >= V(2, 28) else "{}"})
    else:
        body["uptime"] = uptime
    return body


def service(h, mv: Version) -> dict:
    return {"id": h.id if mv >= V(2, 53) else abs(hash(h.id)) % (10 ** 6),
            "binary": "nova-compute", "host": h.hostname, "zone": h.availability_zone,
            "status": "disabled" if h.disabled else "enabled",
            "state": "up" if host_is_up(h) else "down", "updated_at": iso_micro(h.heartbeat_at),
            "disabled_reason": h.disabled_reason,
            **({"forced_down": h.forced_down} if mv >= V(2, 11) else {})}
