"""The workload harness: polling with timeouts, threads that hand back their first
error, the load driver, latency histograms and Redis's own counters."""
