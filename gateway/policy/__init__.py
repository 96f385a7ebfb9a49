"""Policies: checks that every request passes before the upstream call and after it.

    config/policies.yaml ──► spec.py (typed, hashed) ──► pipeline.py ──► checks/<type>.py (one job each)
                                                            │
                                                            └─► quota.py (rate and budget counters:
                                                                in-process, or Redis shared by replicas)

A check is a class registered in the `opsgate.checks` extension group (gateway/extensions.py). Rules in
the policy file bind checks to keys, principals, roles, routers, prompts, indexes and models; each
request's decisions (check, rule, policy hash, verdict, what matched, µs) go into its request log row.
"""
