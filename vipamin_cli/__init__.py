"""vipamin: visual prompt tuning with smart prompt initialisation for frozen ViTs."""

__version__ = "0.1.0"

# Bumped whenever the layout of an artifact changes in a way older readers cannot handle.
SCHEMA_VERSION = 2  # 2: the digest covers the metadata too
