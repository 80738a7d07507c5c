"""Train/val/test assignment by patient, stateless and reproducible.

A patient's split depends only on its id, the seed and the fractions (a hash,
not a shuffle of the cohort), so a resumed, parallel or distributed build
assigns the same split to a patient whatever order the cases arrive in, and all
of one patient's cases (2-D frames, repeated scans) land in the same split.
"""

from __future__ import annotations

import hashlib

__all__ = ["SPLIT_NAMES", "assign_split"]

SPLIT_NAMES = ("train", "val", "test")


def assign_split(patient_id: str, fractions: tuple[float, float, float] = (0.7, 0.2, 0.1), seed: int = 0) -> str:
    """Split name of ``patient_id`` for train/val/test ``fractions`` (seed 001 uses 70/20/10).

    Examples
    --------
    >>> assign_split("LIDC-IDRI-0001") in SPLIT_NAMES
    True
    >>> assign_split("p1", (1.0, 0.0, 0.0))
    'train'
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be 3 non-negative numbers, got {fractions}")
    digest = hashlib.sha256(f"{seed}\0{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64 * sum(fractions)
    edge = 0.0
    for name, frac in zip(SPLIT_NAMES, fractions, strict=True):
        edge += frac
        if u < edge:
            return name
    return SPLIT_NAMES[-1]
