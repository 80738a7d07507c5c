"""Keras 3 adapter: a ``keras.utils.PyDataset`` of augmented patch batches.

``KerasPatchDataset(loader, workers=2, use_multiprocessing=True)`` yields
``(images, masks)`` channel-last batches for ``model.fit``; item ``i`` is batch
``i`` of the current epoch (``on_epoch_end`` moves to the next epoch), so batches
are the same with threads, processes or none. Keras' own ``fit(shuffle=True)``
only permutes the order of batches, with Python's global ``random``; pass
``shuffle=False`` for an exactly repeatable run (the loader already shuffles).

Keras picks its backend when first imported: set ``KERAS_BACKEND`` (``torch``
needs no TensorFlow) before importing this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    import keras
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dsbprep.adapters.keras needs Keras 3 and a backend: pip install 'dsbprep[keras]' and "
        "set KERAS_BACKEND=torch before importing keras (TensorFlow is not needed)"
    ) from err

from ..loader import BatchLoader

__all__ = ["KerasPatchDataset"]


class KerasPatchDataset(keras.utils.PyDataset):
    """Batches ``(images, masks)`` of a :class:`BatchLoader`, channel-last.

    Parameters
    ----------
    loader : BatchLoader or str
        A loader created with ``channels_last=True``, or a path plus ``BatchLoader``
        keyword arguments (``channels_last`` is then forced on).
    epoch : int
        First epoch.
    mask_dtype : str
        dtype of the targets (``float32`` suits sigmoid outputs and Dice losses).
    binary : bool
        Targets are ``mask > 0`` (any label) instead of the label values.
    workers, use_multiprocessing, max_queue_size
        As in ``keras.utils.PyDataset``; each worker process opens its own HDF5 handle.
    """

    def __init__(
        self,
        loader: BatchLoader | str,
        *,
        epoch: int = 0,
        mask_dtype: str = "float32",
        binary: bool = False,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        if isinstance(loader, BatchLoader):
            if kwargs:
                raise TypeError(
                    "pass either a BatchLoader or a path with BatchLoader keyword arguments"
                )
            if not loader.channels_last:
                raise ValueError(
                    "Keras wants channel-last batches: use BatchLoader(..., channels_last=True)"
                )
            self.loader = loader
        else:
            self.loader = BatchLoader(loader, **{**kwargs, "channels_last": True})
        self.epoch = int(epoch)
        self.mask_dtype = np.dtype(mask_dtype)
        self.binary = bool(binary)
        self._batches: tuple[int, list[np.ndarray]] | None = None

    def __len__(self) -> int:
        return self.loader.batches_per_epoch

    def _epoch_batches(self) -> list[np.ndarray]:
        if self._batches is None or self._batches[0] != self.epoch:
            self._batches = (self.epoch, self.loader.epoch_batches(self.epoch))
        return self._batches[1]

    def __getitem__(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        batches = self._epoch_batches()
        if not 0 <= number < len(batches):
            raise IndexError(f"batch {number} out of range for {len(batches)} batches per epoch")
        batch = self.loader.load_batch(batches[number], epoch=self.epoch, number=number)
        masks = batch.masks > 0 if self.binary else batch.masks
        return batch.images, masks.astype(self.mask_dtype)

    def on_epoch_end(self) -> None:
        """Move to the next epoch (a fresh case order and fresh patches).

        Keras calls this after every epoch and also when ``fit`` resets its iterator
        after building the model from a first batch, so ``self.epoch`` may run ahead
        of Keras' epoch count; the sequence of calls, and so of batches, is the same
        in every run. Keras stops its worker pool before calling this, and starts a
        new pool (with the new epoch) for the next epoch.
        """
        self.epoch += 1
