"""Exports of a study's records to the tools researchers already use: TensorBoard (`to_tensorboard`) and
MLflow (`to_mlflow`; new runs of a SQL store in bulk: `mlflow_bulk`), after the fact and from one process.
Reads records only (no torch)."""
