"""Tracking sinks besides the run folder. Importing the package registers the built-in sinks;
each imports its heavy library (mlflow, tensorboard) only when a run switches it on."""

from imagefit.track import mlflow_sink, tensorboard_sink  # noqa: F401 - registers the sinks
