"""Request log, Prometheus metrics, and (later) drift, fairness, online scores and alerts."""
