"""VerSe data: centroid files, dataset folders (and synthetic phantoms).

Imports here stay light (NumPy only); SimpleITK is loaded when an image is read.
"""

from vertebra.data.dataset import VerseCase, VerseDataset, centroids_from_mask, index_verse
from vertebra.data.verse import (
    DEFAULT_DIRECTION,
    FORMATS,
    CentroidFile,
    ImageGrid,
    axcodes,
    image_grid,
    load_centroid_file,
    read_centroids,
    reorientation,
    verse_to_world,
    world_to_verse,
    write_centroids,
)

__all__ = [
    "DEFAULT_DIRECTION",
    "FORMATS",
    "CentroidFile",
    "ImageGrid",
    "SpinePhantom",
    "VerseCase",
    "VerseDataset",
    "axcodes",
    "centroids_from_mask",
    "image_grid",
    "index_verse",
    "load_centroid_file",
    "make_spine_phantom",
    "read_centroids",
    "reorientation",
    "save_phantom",
    "verse_to_world",
    "world_to_verse",
    "write_centroids",
    "write_phantoms",
]

_PHANTOM = ("SpinePhantom", "make_spine_phantom", "save_phantom", "write_phantoms")


def __getattr__(name):  # lazy: the phantom generator loads Numba
    if name in _PHANTOM:
        from vertebra.data import phantom

        return getattr(phantom, name)
    raise AttributeError(f"module 'vertebra.data' has no attribute {name!r}")
