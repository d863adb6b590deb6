"""Servers a lab starts and owns: redis-server processes and containers, the topologies
built from them (replicas, Sentinel, Cluster), ports, spawning, and reaping."""
