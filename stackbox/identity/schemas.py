"""Request shapes of the identity API (Keystone v3). Keystone accepts extra
properties on projects and users and keeps them; so do we."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

Name = Annotated[StrictStr, Field(min_length=1, max_length=255)]
Id = Annotated[StrictStr, Field(min_length=1, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")

    def extras(self) -> dict:
        return dict(self.model_extra or {})


class DomainCreate(_Strict):
    name: Name
    description: StrictStr = ""
    enabled: StrictBool = True
    id: Id | None = None
    tags: list[StrictStr] = []
    options: dict = {}
    explicit_domain_id: Id | None = None


class DomainUpdate(_Strict):
    name: Name | None = None
    description: StrictStr | None = None
    enabled: StrictBool | None = None
    tags: list[StrictStr] | None = None
    options: dict | None = None


class ProjectCreate(_Open):
    name: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    domain_id: Id | None = None
    description: StrictStr = ""
    enabled: StrictBool = True
    tags: list[StrictStr] = []
    parent_id: Id | None = None
    is_domain: StrictBool = False
    options: dict = {}

    @field_validator("is_domain")
    @classmethod
    def _no_domains(cls, v):
        if v:
            raise ValueError("projects acting as domains are not supported; use /v3/domains")
        return v


class ProjectUpdate(_Open):
    name: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None
    description: StrictStr | None = None
    enabled: StrictBool | None = None
    tags: list[StrictStr] | None = None


class UserCreate(_Open):
    name: Name
    domain_id: Id | None = None
    password: StrictStr | None = None
    enabled: StrictBool = True
    default_project_id: Id | None = None
    description: StrictStr = ""
    options: dict = {}


class UserUpdate(_Open):
    name: Name | None = None
    password: StrictStr | None = None
    enabled: StrictBool | None = None
    default_project_id: Id | None = None
    description: StrictStr | None = None


class PasswordChange(_Strict):
    password: StrictStr = Field(min_length=1)
    original_password: StrictStr


class GroupCreate(_Strict):
    name: Name
    domain_id: Id | None = None
    description: StrictStr = ""


class GroupUpdate(_Strict):
    name: Name | None = None
    description: StrictStr | None = None


class RoleCreate(_Strict):
    name: Name
    description: StrictStr = ""
    domain_id: None = None
    options: dict = {}


class RoleUpdate(_Strict):
    name: Name | None = None
    description: StrictStr | None = None
    options: dict | None = None


class RoleRef(_Strict):
    id: Id | None = None
    name: Name | None = None
    domain_id: None = None


class AppCredCreate(_Strict):
    name: Name
    description: StrictStr | None = ""
    secret: StrictStr | None = None
    expires_at: dt.datetime | None = None
    roles: list[RoleRef] | None = None
    unrestricted: StrictBool = False
    access_rules: list[dict] | None = None

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, v):
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=dt.timezone.utc)
        return v

    @field_validator("access_rules")
    @classmethod
    def _no_rules(cls, v):
        if v:
            raise ValueError("access rules are not supported")
        return v


class Ec2Create(_Strict):
    tenant_id: Id
