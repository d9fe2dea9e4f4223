"""Object storage: one store behind the Swift v1 and S3 APIs.

Lowest layers first: `ring` maps names to partitions and partitions to
devices; `diskfile` keeps one object as one file on one device.
"""
