"""Device mesh, logical-axis sharding rules, sharded initialization, pipeline parallelism."""
