"""The training layer: engines, packs and stacks, checkpoints, one trial's run — the only part of ftvar that
imports torch (and transformers' model classes).

May import: study, store, data. Imported lazily, inside a job or a command, never by the collector or the
report.
"""
