"""The store layer: a study's folder on shared storage — trial records (schema, redaction, atomic writes),
attempts, the launches ledger and lock, and the collector that turns records into one table.

May import: study. Never torch: the collector runs on a login node.
"""
