"""Framework adapters for :class:`dsbprep.loader.BatchLoader` (optional extras).

* :mod:`dsbprep.adapters.torch` - ``PatchDataset`` (map-style) with ``EpochSampler``
  (epochs, shuffling and rank/world-size sharding), and ``PatchStream`` (an
  ``IterableDataset`` of whole batches, infinite when the loader's ``epochs`` is None).
  Needs ``pip install 'dsbprep[torch]'``. Its workers hand batches over through the
  shared-memory slot ring of :mod:`dsbprep.adapters.ring`.
* :mod:`dsbprep.adapters.keras` - ``KerasPatchDataset``, a ``keras.utils.PyDataset``
  with ``workers`` / ``use_multiprocessing``. Needs ``pip install 'dsbprep[keras]'``
  and a backend (``KERAS_BACKEND=torch`` works without TensorFlow).

Each adapter imports its framework only when the adapter module itself is
imported; this package's ``__init__`` imports neither.
"""

__all__: list[str] = []
