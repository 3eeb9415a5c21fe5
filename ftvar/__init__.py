"""ftvar: fine-tuning variability studies on GPU clusters."""

__version__ = "0.2.0"
