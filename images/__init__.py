"""FreeBSD image catalogue: download, checksum, cache and preparation of guest images."""
