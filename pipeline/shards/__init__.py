"""What is on disk: the shard format (schema, ignore index, manifest model), its writer and its one reader."""
