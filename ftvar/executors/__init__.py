"""Executors: where trials run. `local` (subprocesses here) and `slurm` (job arrays) sit side by side.

`ftvar.launch` decides what to run and hands it to one of them; they only run it.
"""
