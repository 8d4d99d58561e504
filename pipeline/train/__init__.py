"""The train stage: a lean trainer that reads only the shards (`loop.train` is the entry point)."""
