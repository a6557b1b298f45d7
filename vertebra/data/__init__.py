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
    "VerseCase",
    "VerseDataset",
    "axcodes",
    "centroids_from_mask",
    "image_grid",
    "index_verse",
    "load_centroid_file",
    "read_centroids",
    "reorientation",
    "verse_to_world",
    "world_to_verse",
    "write_centroids",
]
