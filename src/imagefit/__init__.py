"""imagefit: train, fine-tune, compare, evaluate and ship image classifiers."""

__version__ = "0.1.0"
