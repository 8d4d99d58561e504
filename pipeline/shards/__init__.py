"""What is on disk: the shard format (Arrow schema, manifest) and the writer."""
