"""Network domain errors. Each carries `neutron_type`, the name Neutron's
clients see in `NeutronError.type`; the status comes from its base class."""

from __future__ import annotations

from stackbox.common.errors import BadRequest, Conflict, Forbidden, NotFound


def _typed(base, name: str):
    return type(name, (base,), {"neutron_type": name, "__doc__": f"Neutron's {name}."})


NetworkNotFound = _typed(NotFound, "NetworkNotFound")
SubnetNotFound = _typed(NotFound, "SubnetNotFound")
PortNotFound = _typed(NotFound, "PortNotFound")
RouterNotFound = _typed(NotFound, "RouterNotFound")
FloatingIPNotFound = _typed(NotFound, "FloatingIPNotFound")
SecurityGroupNotFound = _typed(NotFound, "SecurityGroupNotFound")
SecurityGroupRuleNotFound = _typed(NotFound, "SecurityGroupRuleNotFound")
ExtensionNotFound = _typed(NotFound, "ExtensionNotFound")
ExternalGatewayForFloatingIPNotFound = _typed(NotFound, "ExternalGatewayForFloatingIPNotFound")
RouterInterfaceNotFound = _typed(NotFound, "RouterInterfaceNotFoundForSubnet")

InvalidInput = _typed(BadRequest, "InvalidInput")
InvalidAllocationPool = _typed(BadRequest, "InvalidAllocationPool")
GatewayNotInSubnet = _typed(BadRequest, "InvalidInput")
InvalidIpForSubnet = _typed(BadRequest, "InvalidIpForSubnet")
InvalidIpForNetwork = _typed(BadRequest, "InvalidIpForNetwork")
OverlappingSubnet = _typed(BadRequest, "InvalidInput")
InvalidPhysicalNetwork = _typed(BadRequest, "InvalidInput")
InvalidRoutes = _typed(BadRequest, "InvalidRoutes")
SecurityGroupRuleInvalid = _typed(BadRequest, "SecurityGroupRuleParameterConflict")
PortSecurityRequired = _typed(Conflict, "PortSecurityAndIPRequiredForSecurityGroups")

NetworkInUse = _typed(Conflict, "NetworkInUse")
SubnetInUse = _typed(Conflict, "SubnetInUse")
PortInUse = _typed(Conflict, "PortInUse")
RouterInUse = _typed(Conflict, "RouterInUse")
SecurityGroupInUse = _typed(Conflict, "SecurityGroupInUse")
SecurityGroupRuleExists = _typed(Conflict, "SecurityGroupRuleExists")
IpAddressInUse = _typed(Conflict, "IpAddressInUse")
MacAddressInUse = _typed(Conflict, "MacAddressInUse")
IpAddressGenerationFailure = _typed(Conflict, "IpAddressGenerationFailure")
SegmentInUse = _typed(Conflict, "VlanIdInUse")
GatewayConflictWithAllocationPools = _typed(Conflict, "GatewayConflictWithAllocationPools")
RouterInterfaceInUse = _typed(Conflict, "RouterInterfaceInUseByRoute")
FloatingIPPortAlreadyAssociated = _typed(Conflict, "FloatingIPPortAlreadyAssociated")
DefaultSecurityGroupDelete = _typed(Conflict, "SecurityGroupCannotRemoveDefault")

PolicyNotAuthorized = _typed(Forbidden, "PolicyNotAuthorized")
