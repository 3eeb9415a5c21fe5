"""ftvar: fine-tuning variability studies on GPU clusters."""

__version__ = "0.1.0"
