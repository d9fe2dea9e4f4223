"""Guest images built from Debian packages (the CirrOS-like `tiny` guest)
and the config drive that feeds them metadata."""
