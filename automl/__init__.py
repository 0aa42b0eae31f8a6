"""automl: search for the best transfer-learning image classifier for your data."""

__version__ = "0.1.0"
