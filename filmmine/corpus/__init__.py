"""The corpus on disk: its schema, sample encoding, shard writers, staged units, film
assembly, atomic writes, and the one reader of manifests, tables and shards."""
