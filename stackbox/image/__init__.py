"""The image service (Glance v2): image records, members and tags, and image
data on local disk, inspected before it is accepted."""
