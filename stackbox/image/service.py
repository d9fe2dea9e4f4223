"""Image rules and transactions (Glance v2 semantics). Every public method
takes the caller's RequestContext first; visibility decides whether an image
exists for the caller (404), policy then whether it may act on it (403)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import func, or_, select

from stackbox.common.db import Database, utcnow
from stackbox.common.errors import BadRequest, Conflict, Forbidden, NotFound, QuotaExceeded
from stackbox.common.http.context import RequestContext
from stackbox.image import schemas
from stackbox.image.drivers import Staged, Store
from stackbox.image.drivers.qemuimg import inspect
from stackbox.image.models import Image, ImageMember
from stackbox.image.policy import enforce

log = logging.getLogger("stackbox.image")

HASH_ALGO = "sha512"
SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "id",
             "created_at", "updated_at", "visibility", "owner", "min_disk", "min_ram",
             "virtual_size")
MAX_MEMBERS = 128
QUOTA_NAME = "image_size_total"


@dataclasses.dataclass(frozen=True)
class ListQuery:
    """Filters of GET /v2/images, already parsed."""
    visibility: str | None = None
    member_status: str = "accepted"
    columns: dict[str, Any] = dataclasses.field(default_factory=dict)  # name, status, ...
    properties: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: tuple[str, ...] = ()
    size_min: int | None = None
    size_max: int | None = None
    ids: tuple[str, ...] = ()
    sort: tuple[tuple[str, str], ...] = (("created_at", "desc"),)


@dataclasses.dataclass
class Upload:
    """An upload in progress: where its bytes go, and whose quota they use."""
    image_id: str
    staged: Staged


def _target(img: Image, **extra) -> dict:
    return {"owner": img.owner, "image_id": img.id, **extra}


class ImageService:
    def __init__(self, db: Database, settings, store: Store, *,
                 inspector: Callable = inspect):
        self.db = db
        self.store = store
        self.max_project_bytes = settings.image.max_project_bytes
        self.inspect_timeout = settings.image.inspect_timeout
        self.inspector = inspector

    # -- visibility ----------------------------------------------------------
    @staticmethod
    def _membership(s, img_id: str, project_id: str | None) -> ImageMember | None:
        if project_id is None:
            return None
        return s.get(ImageMember, (img_id, project_id))

    def _visible(self, s, ctx: RequestContext, img: Image) -> bool:
        if ctx.is_admin or img.owner == ctx.project_id:
            return True
        if img.visibility in ("public", "community"):
            return True
        # Members see a shared image whatever their answer (Glance): the answer
        # only decides whether it is listed.
        return img.visibility == "shared" and \
            self._membership(s, img.id, ctx.project_id) is not None

    def _find(self, s, ctx: RequestContext, image_id: str) -> Image:
        img = s.get(Image, image_id) if image_id else None
        if img is None or not self._visible(s, ctx, img):
            raise NotFound(f"No image found with ID {image_id}")
        return img

    # -- images ----------------------------------------------------------------
    def create_image(self, ctx: RequestContext, *, image_id: str | None,
                     core: dict[str, Any], properties: dict[str, str]) -> Image:
        owner = core.get("owner") or ctx.project_id
        enforce(ctx, "add_image", {"owner": owner})
        if owner != ctx.project_id:
            enforce(ctx, "set_image_owner")
        self._check_visibility_change(ctx, core.get("visibility"), owner)
        now = utcnow()
        img = Image(id=image_id or schemas.new_image_id(), name=core.get("name"), owner=owner,
                    status="queued", visibility=core.get("visibility") or "shared",
                    protected=core.get("protected", False),
                    os_hidden=core.get("os_hidden", False),
                    disk_format=core.get("disk_format"),
                    container_format=core.get("container_format"),
                    min_disk=core.get("min_disk", 0), min_ram=core.get("min_ram", 0),
                    properties=dict(properties), tags=list(core.get("tags") or []),
                    created_at=now, updated_at=now)
        with self.db.transaction() as s:
            if s.get(Image, img.id) is not None:
                raise Conflict(f"Image with identifier {img.id} already exists!")
            s.add(img)
        return img

    @staticmethod
    def _check_visibility_change(ctx, visibility: str | None, owner: str) -> None:
        if visibility == "public":
            enforce(ctx, "publicize_image", {"owner": owner})
        elif visibility == "community":
            enforce(ctx, "communitize_image", {"owner": owner})

    def get_image(self, ctx: RequestContext, image_id: str) -> Image:
        enforce(ctx, "get_image")
        with self.db.read() as s:
            return self._find(s, ctx, image_id)

    def list_images(self, ctx: RequestContext, query: ListQuery) -> list[Image]:
        """Every image the caller may list that matches, sorted."""
        enforce(ctx, "get_images")
        q = select(Image)
        for column, value in query.columns.items():
            attr = getattr(Image, column)
            q = q.where(attr.in_(value) if isinstance(value, list) else attr == value)
        if "os_hidden" not in query.columns:
            q = q.where(Image.os_hidden.is_(False))
        if query.ids:
            q = q.where(Image.id.in_(query.ids))
        if query.size_min is not None:
            q = q.where(Image.size >= query.size_min)
        if query.size_max is not None:
            q = q.where(Image.size <= query.size_max)
        q = q.where(self._listable(ctx, query))
        with self.db.read() as s:
            images = list(s.scalars(q))
        images = [i for i in images
                  if all(t in (i.tags or []) for t in query.tags)
                  and all((i.properties or {}).get(k) == v
                          for k, v in query.properties.items())]
        for key, direction in reversed(query.sort):
            images.sort(key=lambda i, k=key: _sort_value(getattr(i, k)),
                        reverse=direction == "desc")
        return images

    def _listable(self, ctx: RequestContext, query: ListQuery):
        v = query.visibility
        if ctx.is_admin:
            return Image.visibility == v if v not in (None, "all") else Image.id.is_not(None)
        mine = Image.owner == ctx.project_id
        members = select(ImageMember.image_id).where(ImageMember.member_id == ctx.project_id)
        if query.member_status != "all":
            members = members.where(ImageMember.status == query.member_status)
        shared_with_me = (Image.visibility == "shared") & Image.id.in_(members)
        return {
            None: or_(mine, Image.visibility == "public", shared_with_me),
            "all": or_(mine, Image.visibility.in_(("public", "community")), shared_with_me),
            "public": Image.visibility == "public",
            "community": Image.visibility == "community",
            "private": mine & (Image.visibility == "private"),
            "shared": (mine & (Image.visibility == "shared")) | shared_with_me,
        }[v]

    def update_image(self, ctx: RequestContext, image_id: str,
                     ops: list[schemas.PatchOp]) -> Image:
        with self.db.transaction() as s:
            img = self._find(s, ctx, image_id)
            enforce(ctx, "modify_image", _target(img))
            props = dict(img.properties or {})
            for op in ops:
                self._apply(ctx, img, props, op)
            if len(props) > schemas.MAX_PROPERTIES:
                raise Forbidden(f"Maximum number of image properties "
                                f"({schemas.MAX_PROPERTIES}) exceeded.")
            img.properties = props
            img.updated_at = utcnow()
        return img

    def _apply(self, ctx, img: Image, props: dict, op: schemas.PatchOp) -> None:
        name = op.name
        if name == "id":
            if op.op != "remove" and op.value == img.id:
                return  # clients echo the id back; a no-op, as in Glance
            raise Forbidden("Attribute 'id' is read-only.")
        if op.op == "remove":
            if name in schemas.CORE:
                raise Forbidden(f"Property {name} may not be removed.")
            if name in schemas.RESERVED:
                raise Forbidden(f"Attribute '{name}' is reserved.")
            if name not in props:
                raise Conflict(f"Property {name} does not exist.")
            del props[name]
            return
        value = schemas.check_attribute(name, op.value)
        if name not in schemas.CORE:
            if op.op == "replace" and name not in props:
                raise Conflict(f"Property {name} does not exist.")
            props[name] = value
            return
        if name in ("disk_format", "container_format") and img.status != "queued" \
                and value != getattr(img, name):
            raise Forbidden(f"Attribute {name} can be only replaced for a queued image.")
        if name == "visibility":
            self._check_visibility_change(ctx, value, img.owner)
        if name == "owner" and value != img.owner:
            enforce(ctx, "set_image_owner")
        if name in ("protected", "os_hidden", "min_disk", "min_ram", "visibility") \
                and value is None:
            raise BadRequest(f"Invalid input for field '{name}': None is not allowed.",
                             field=name)
        if name == "owner" and not value:
            raise BadRequest("Invalid input for field 'owner': an image needs an owner.",
                             field="owner")
        setattr(img, name, list(value) if name == "tags" else value)

    def delete_image(self, ctx: RequestContext, image_id: str) -> None:
        with self.db.transaction() as s:
            img = self._find(s, ctx, image_id)
            enforce(ctx, "delete_image", _target(img))
            if img.protected:
                raise Forbidden(f"Image {img.id} is protected and cannot be deleted.")
            for m in s.scalars(select(ImageMember).where(ImageMember.image_id == img.id)):
                s.delete(m)
            s.delete(img)
        self.store.delete(image_id)

    def add_tag(self, ctx: RequestContext, image_id: str, tag: str) -> None:
        schemas.check_attribute("tags", [tag])
        with self.db.transaction() as s:
            img = self._find(s, ctx, image_id)
            enforce(ctx, "modify_image", _target(img))
            tags = list(img.tags or [])
            if tag not in tags:
                if len(tags) >= schemas.MAX_TAGS:
                    raise QuotaExceeded("image_tag", limit=schemas.MAX_TAGS,
                                        in_use=len(tags), requested=1)
                img.tags = tags + [tag]
                img.updated_at = utcnow()

    def delete_tag(self, ctx: RequestContext, image_id: str, tag: str) -> None:
        with self.db.transaction() as s:
            img = self._find(s, ctx, image_id)
            enforce(ctx, "modify_image", _target(img))
            if tag not in (img.tags or []):
                raise NotFound(f"Tag {tag} not found on image {image_id}.")
            img.tags = [t for t in img.tags if t != tag]
            img.updated_at = utcnow()

    def set_active(self, ctx: RequestContext, image_id: str, *, active: bool) -> None:
        """deactivate (active -> deactivated) or reactivate (the reverse)."""
        with self.db.transaction() as s:
            img = self._find(s, ctx, image_id)
            enforce(ctx, "reactivate" if active else "deactivate", _target(img))
            if img.status not in ("active", "deactivated"):
                raise Forbidden(f"Not allowed to {'re' if active else 'de'}activate image in "
                                f"status '{img.status}'")
            img.status = "active" if active else "deactivated"
            img.updated_at = utcnow()

    # -- data ------------------------------------------------------------------
    def _usage(self, s, owner: str) -> int:
        return s.scalar(select(func.coalesce(func.sum(Image.size), 0)).where(
            Image.owner == owner, Image.size.is_not(None))) or 0

    def _quota_check(self, in_use: int) -> Callable[[int], None]:
        limit = self.max_project_bytes

        def check(total: int) -> None:
            if in_use + total > limit:
                raise QuotaExceeded(QUOTA_NAME, limit=limit, in_use=in_use, requested=total)
        return check

    def begin_upload(self, ctx: RequestContext, image_id: str, *,
                     declared_size: int | None = None) -> Upload:
        """Mark the image saving and open a staging file. The caller writes the
        bytes, then calls finish_upload, or abort_upload on any failure."""
        with self.db.transaction() as s:
            img = self._find(s, ctx, image_id)
            enforce(ctx, "upload_image", _target(img))
            if img.status != "queued":
                raise Conflict(f"Image status transition from {img.status} to saving is "
                               f"not allowed")
            if not img.disk_format or not img.container_format:
                raise BadRequest("Properties disk_format, container_format must be set "
                                 "prior to saving data.")
            check = self._quota_check(self._usage(s, img.owner))
            if declared_size is not None:
                check(declared_size)
            img.status = "saving"
            img.updated_at = utcnow()
        return Upload(image_id=image_id, staged=self.store.stage(check_size=check))

    def abort_upload(self, ctx: RequestContext, upload: Upload) -> None:
        upload.staged.discard()
        with self.db.transaction() as s:
            img = s.get(Image, upload.image_id)
            if img is not None and img.status == "saving":
                img.status = "queued"
                img.updated_at = utcnow()

    def finish_upload(self, ctx: RequestContext, upload: Upload) -> Image:
        """Inspect the staged bytes; keep them only if they are what the image
        declares and fit the owner's quota."""
        staged = upload.staged
        staged.finish()
        with self.db.read() as s:
            img = s.get(Image, upload.image_id)
            if img is None:
                raise NotFound(f"Image {upload.image_id} was deleted during the upload.")
            disk_format = img.disk_format
        found = self.inspector(staged.path, disk_format, timeout=self.inspect_timeout)
        with self.db.transaction() as s:
            img = s.get(Image, upload.image_id)
            if img is None or img.status != "saving":
                raise Conflict(f"Image {upload.image_id} changed during the upload.")
            self._quota_check(self._usage(s, img.owner))(staged.size)
            img.size = staged.size
            img.virtual_size = found.virtual_size
            img.checksum = staged.md5()
            img.os_hash_algo = HASH_ALGO
            img.os_hash_value = staged.sha512()
            img.status = "active"
            img.updated_at = utcnow()
            self.store.commit(staged, img.id)
        log.info("image %s: %d bytes of %s accepted", img.id, img.size, disk_format)
        return img

    def open_data(self, ctx: RequestContext, image_id: str) -> tuple[Image, Path | None]:
        """The image and its data file; None while it has no data."""
        enforce(ctx, "download_image")
        with self.db.read() as s:
            img = self._find(s, ctx, image_id)
        if img.status == "deactivated" and not ctx.is_admin:
            raise Forbidden("The requested image has been deactivated. Image data download "
                            "is forbidden.")
        if img.status not in ("active", "deactivated"):
            return img, None
        path = self.store.path(img.id)
        if path is None:
            raise NotFound(f"Image {img.id} has no data in the store.")
        return img, path

    # -- members ---------------------------------------------------------------
    def _shared(self, s, ctx, image_id: str) -> Image:
        img = self._find(s, ctx, image_id)
        if img.visibility != "shared":
            raise Forbidden(f"Only shared images have members (image {img.id} is "
                            f"{img.visibility}).")
        return img

    def list_members(self, ctx: RequestContext, image_id: str) -> list[ImageMember]:
        with self.db.read() as s:
            img = self._shared(s, ctx, image_id)
            enforce(ctx, "get_members", _target(img, member_id=ctx.project_id))
            q = select(ImageMember).where(ImageMember.image_id == img.id)
            if not (ctx.is_admin or img.owner == ctx.project_id):
                q = q.where(ImageMember.member_id == ctx.project_id)
            return list(s.scalars(q.order_by(ImageMember.created_at)))

    def get_member(self, ctx: RequestContext, image_id: str, member_id: str) -> ImageMember:
        with self.db.read() as s:
            img = self._shared(s, ctx, image_id)
            m = s.get(ImageMember, (img.id, member_id))
            if m is None or not (ctx.is_admin or ctx.project_id in (img.owner, member_id)):
                raise NotFound(f"Member {member_id} not found for image {image_id}.")
            enforce(ctx, "get_member", _target(img, member_id=member_id))
            return m

    def add_member(self, ctx: RequestContext, image_id: str, member_id: str) -> ImageMember:
        with self.db.transaction() as s:
            img = self._shared(s, ctx, image_id)
            enforce(ctx, "add_member", _target(img))
            if s.get(ImageMember, (img.id, member_id)) is not None:
                raise Conflict(f"Member {member_id} already associated with image {img.id}.")
            count = s.scalar(select(func.count()).select_from(ImageMember).where(
                ImageMember.image_id == img.id))
            if count >= MAX_MEMBERS:
                raise QuotaExceeded("image_member", limit=MAX_MEMBERS, in_use=count,
                                    requested=1)
            now = utcnow()
            m = ImageMember(image_id=img.id, member_id=member_id, status="pending",
                            created_at=now, updated_at=now)
            s.add(m)
        return m

    def update_member(self, ctx: RequestContext, image_id: str, member_id: str,
                      status: str) -> ImageMember:
        with self.db.transaction() as s:
            img = self._shared(s, ctx, image_id)
            m = s.get(ImageMember, (img.id, member_id))
            if m is None:
                raise NotFound(f"Member {member_id} not found for image {image_id}.")
            enforce(ctx, "modify_member", _target(img, member_id=member_id))
            m.status = status
            m.updated_at = utcnow()
        return m

    def delete_member(self, ctx: RequestContext, image_id: str, member_id: str) -> None:
        with self.db.transaction() as s:
            img = self._shared(s, ctx, image_id)
            enforce(ctx, "delete_member", _target(img))
            m = s.get(ImageMember, (img.id, member_id))
            if m is None:
                raise NotFound(f"Member {member_id} not found for image {image_id}.")
            s.delete(m)


def _sort_value(v):
    return (v is not None, v if v is not None else 0)
