"""The run folder: its file names, checkpoint format, typed records, reader and writers.

The bottom layer every other package reads and writes run folders through; it knows nothing
about data, models or training (see :mod:`imagefit.layers` for the order of the packages).
"""
