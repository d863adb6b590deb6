"""Existing deployments: a run on someone else's Redis, its target parsed and masked,
every command guarded to the run's key prefix, and its keys surveyed and cleaned."""
