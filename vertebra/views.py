"""How a CT becomes the network's K input views: one definition for training and inference.

A :class:`ViewConfig` fixes the C-arm (SAD, SID, K views 360/K degrees apart on the
circular orbit of :func:`drrkit.circular_orbit`) and the pixel size *at the isocentre*
(``mm_per_pixel``). The detector is sized to the CT: it covers the projection of the CT's
box in every view plus a margin, rounded up to a multiple of ``multiple`` pixels so U-Nets
can downsample it, and never larger than ``max_size``. Keeping the pixel size at the
isocentre fixed (instead of the detector size) makes vertebrae the same size in pixels in
every CT, which is what the networks learn from.

Network input: line integrals divided by ``intensity_scale`` (a fixed constant, not a
per-image statistic, so the absolute attenuation of bone stays informative).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

import drrkit
from drrkit.volume import check_bone_enhancement
from vertebra.errors import VertebraError


@dataclass(frozen=True)
class ViewConfig:
    """The C-arm and detector used to turn a CT into network inputs.

    Attributes:
        views: K, views 360/K degrees apart, view 0 anterior (the paper uses 10).
        sad: source-to-isocentre distance, mm (paper 500).
        sid: source-to-detector distance, mm (paper 1000).
        mm_per_pixel: detector pixel size measured at the isocentre, mm.
        margin_mm: border added around the CT's projected box, mm at the isocentre.
        multiple: detector height and width are multiples of this (U-Net strides).
        max_size: largest detector side in pixels.
        step: ray-marching step in mm (None: half the smallest voxel spacing).
        intensity_scale: line integrals are divided by this to give the network input.
        bone_gain, bone_threshold_hu: attenuation above ``bone_threshold_hu`` is steepened
            ``bone_gain`` times before rendering (:func:`drrkit.enhance_bone`), so ribs,
            sacrum and pelvis stand out of the soft tissue; ``bone_gain = 1`` (the
            default, and what a stored config without these fields means) renders the
            plain CT.
    """

    views: int = 10
    sad: float = 500.0
    sid: float = 1000.0
    mm_per_pixel: float = 2.0
    margin_mm: float = 8.0
    multiple: int = 32
    max_size: int = 1024
    step: float | None = None
    intensity_scale: float = 8.0
    bone_gain: float = 1.0
    bone_threshold_hu: float = 200.0

    def __post_init__(self) -> None:
        if self.views < 1 or int(self.views) != self.views:
            raise VertebraError(f"views must be a positive integer, got {self.views}")
        if not 0 < self.sad < self.sid:
            raise VertebraError(f"need 0 < sad < sid, got {self.sad}, {self.sid}")
        if not self.mm_per_pixel > 0 or not self.intensity_scale > 0:
            raise VertebraError("mm_per_pixel and intensity_scale must be positive")
        if self.multiple < 1 or self.max_size < self.multiple:
            raise VertebraError("need 1 <= multiple <= max_size")
        check_bone_enhancement(self.bone_threshold_hu, self.bone_gain)

    @property
    def magnification(self) -> float:
        """Magnification at the isocentre, sid / sad."""
        return self.sid / self.sad

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ViewConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def detector_size(self, volume: drrkit.Volume) -> tuple[int, int]:
        """(H, W) pixels covering the CT's box in every view of the orbit plus the margin."""
        corners = volume.corners - volume.center
        radial = np.hypot(corners[:, 0], corners[:, 1]).max()  # any angle about z
        height_mm = 2 * np.abs(corners[:, 2]).max()
        # the nearest point of the box to the source is magnified the most
        near = self.sid / max(self.sad - radial, 1e-3 * self.sad)
        width_px = (2 * radial * near + 2 * self.margin_mm * self.magnification)
        height_px = (height_mm * near + 2 * self.margin_mm * self.magnification)
        pixel = self.mm_per_pixel * self.magnification
        size = [int(np.ceil(x / pixel / self.multiple) * self.multiple)
                for x in (height_px, width_px)]
        return tuple(min(s, self.max_size) for s in size)

    def geometry(self, volume: drrkit.Volume, start_angle: float = 0.0,
                 size: tuple[int, int] | None = None) -> drrkit.Geometry:
        """The K views about the CT's box centre.

        Args:
            volume: the CT (for its box).
            start_angle: angle of view 0 in degrees (training jitters it).
            size: (H, W) detector pixels; default :meth:`detector_size`.
        """
        return drrkit.circular_orbit(
            volume, views=self.views, sad=self.sad, sid=self.sid,
            size=size or self.detector_size(volume),
            pixel_spacing=self.mm_per_pixel * self.magnification, start_angle=start_angle)

    def attenuation(self, volume: drrkit.Volume) -> drrkit.Volume:
        """The volume these views integrate (1/mm): ``volume`` bone-enhanced when
        ``bone_gain > 1`` (a new volume), else ``volume`` itself."""
        if self.bone_gain == 1.0:
            return volume
        return drrkit.enhance_bone(volume, self.bone_threshold_hu, self.bone_gain)

    def same_attenuation(self, other: ViewConfig) -> bool:
        """Whether ``other`` integrates the same volume (its :meth:`attenuation` can be reused)."""
        if self.bone_gain == other.bone_gain == 1.0:
            return True
        return (self.bone_gain, self.bone_threshold_hu) == (other.bone_gain,
                                                             other.bone_threshold_hu)

    def render(self, volume: drrkit.Volume, geometry: drrkit.Geometry,
               backend: str = "auto", *, enhanced: bool = False) -> np.ndarray:
        """(K, H, W) float32 network inputs for an attenuation volume (1/mm).

        ``enhanced``: ``volume`` is already :meth:`attenuation` of the CT (skips the bone
        enhancement, e.g. when two networks' views share it).
        """
        if not enhanced:
            volume = self.attenuation(volume)
        # trilinear on every backend: the networks learn from these exact inputs, and the
        # CUDA kernels sample trilinearly too
        drr = drrkit.render(volume, geometry, backend=backend, step=self.step,
                            method="trilinear")
        return normalize(drr, self.intensity_scale)


def normalize(drr: np.ndarray, intensity_scale: float) -> np.ndarray:
    """Line integrals (any shape) -> float32 network input ``drr / intensity_scale``."""
    return (np.asarray(drr, dtype=np.float32) / np.float32(intensity_scale)).astype(
        np.float32, copy=False)
