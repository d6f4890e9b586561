"""The bottom layer: typed config, the session factory, table schemas, URIs, text hashing, errors."""
