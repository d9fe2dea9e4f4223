"""The HTTP layer shared by every service: app factory, middleware, error
dialects, body validation, pagination, versions and microversions."""
