"""The run layer: deciding what to run (`launch`), running it locally or as SLURM arrays, the callables that
run on a compute node (`jobs`), and `status`. It decides and submits; training happens in `ftvar.train`.

May import: study, store, data, report; train only inside node-side jobs and commands (never at module top).
"""
