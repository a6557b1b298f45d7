"""One CT file to labelled vertebrae and output files: read, label, write.

:func:`label` is the Python one-liner (``vertebra.label("ct.nii.gz")``); the ``vertebra
label`` command and it share :func:`label_file`, so both write the same files
(:func:`vertebra.report.write_outputs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import drrkit
from vertebra.errors import VertebraError


def pipeline_config(networks, **changes):
    """The :class:`vertebra.pipeline.PipelineConfig` to label with these networks.

    The networks' own settings (:attr:`vertebra.pipeline.Networks.settings`), then
    ``changes`` (any :class:`~vertebra.pipeline.PipelineConfig` field, e.g.
    ``localizer_views=20``, ``allow_t13=False``).
    """
    from vertebra.pipeline import PipelineConfig

    fields = PipelineConfig.__dataclass_fields__
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise VertebraError(f"unknown pipeline settings: {', '.join(unknown)} (choose from "
                            f"{', '.join(fields)})")
    return PipelineConfig(**{**networks.settings, **changes})


def label_file(ct: str | Path | drrkit.Volume, networks, config=None, *,
               out: str | Path | None = None, stem: str | None = None, backend: str = "auto",
               nan: str = "zero", pictures: bool = True, truth: dict | None = None,
               source: str | None = None, progress: Callable[[str], None] | None = None):
    """Label one CT and, with ``out``, write its outputs.

    Args:
        ct: a CT file (NIfTI, MHA, NRRD) or DICOM folder, or a :class:`drrkit.Volume` of
            attenuation in 1/mm.
        networks: :class:`vertebra.pipeline.Networks` (:func:`vertebra.pipeline.load_networks`).
        config: :class:`vertebra.pipeline.PipelineConfig` (default :func:`pipeline_config`).
        out: folder for the outputs (:func:`vertebra.report.write_outputs`); None writes
            nothing.
        stem: case name of the output files (default: from the file name,
            :func:`vertebra.report.case_stem`; "ct" for a Volume).
        backend: drrkit render backend ("auto", "cpu", "cuda").
        nan: non-finite CT voxels: "zero" (air, with a warning) or "raise".
        pictures: also write the PNGs.
        truth: {VerSe id: (3,) world mm} ground truth, drawn as rings in the PNGs.
        source: for a Volume, the file it was read from (recorded in the outputs).
        progress: called with "reading", each stage's name (:data:`vertebra.pipeline.STAGES`)
            and "writing" as each starts.

    Returns:
        (:class:`vertebra.pipeline.LabelResult`, {output: path}; empty without ``out``).
    """
    from vertebra.pipeline import label_ct
    from vertebra.report import case_stem, write_outputs

    def step(name: str) -> None:
        if progress is not None:
            progress(name)

    config = pipeline_config(networks) if config is None else config
    step("reading")
    if isinstance(ct, drrkit.Volume):
        volume = ct
    else:
        volume, source = drrkit.load_volume(ct, nan=nan), str(ct)
    result = label_ct(volume, networks.localizer, networks.identifier, views=networks.views,
                      identifier_views=networks.identifier_views, config=config,
                      backend=backend, progress=progress)
    paths = {}
    if out is not None:
        step("writing")
        if stem is None:
            stem = "ct" if source is None else case_stem(source)
        paths = write_outputs(
            result, volume, out, stem, pictures=pictures, truth=truth, input=source,
            device=networks.device, precision=networks.precision,
            networks=networks.source, view_config=networks.views.to_dict(),
            identifier_view_config=(networks.identifier_views.to_dict()
                                    if networks.identifier_views else None),
            pipeline=dataclasses.asdict(config))
    return result, paths


def label(ct: str | Path | drrkit.Volume, out: str | Path | None = None, *, model=None,
          localizer=None, identifier=None, networks=None, device: str = "auto",
          precision: str = "auto", backend: str = "auto", nan: str = "zero",
          pictures: bool = True, **settings):
    """Label the vertebrae of one CT with the default (or given) networks.

    Example:
        >>> import vertebra
        >>> result = vertebra.label("ct.nii.gz")  # doctest: +SKIP
        >>> [(v.name, v.world, v.confidence) for v in result.vertebrae]  # doctest: +SKIP

    Args:
        ct: a CT file (NIfTI, MHA, NRRD) or DICOM folder, or a :class:`drrkit.Volume` of
            attenuation in 1/mm.
        out: also write the outputs of ``vertebra label`` into this folder
            (:func:`vertebra.report.write_outputs`).
        model, localizer, identifier: checkpoints as for
            :func:`vertebra.pipeline.load_networks`; none: the default networks.
        networks: networks already loaded (for many CTs); then the three above are unused.
        device: torch device of the networks ("auto", "cpu", "cuda", "cuda:N").
        precision: their forward passes ("auto", "float32", "bfloat16";
            :func:`vertebra.pipeline.resolve_precision`).
        backend: drrkit render backend ("auto", "cpu", "cuda").
        nan: non-finite CT voxels: "zero" (air, with a warning) or "raise".
        pictures: with ``out``, also write the PNGs.
        settings: :class:`vertebra.pipeline.PipelineConfig` fields that override the
            networks' settings (e.g. ``localizer_views=20``).

    Returns:
        :class:`vertebra.pipeline.LabelResult`: ``vertebrae`` (superior first), each with
        ``name``, ``verse_id``, ``world`` (3,) LPS mm and ``confidence``; ``centroids()``
        gives {VerSe id: (3,) mm}.
    """
    from vertebra.pipeline import load_networks

    if not isinstance(ct, drrkit.Volume) and not Path(ct).exists():
        raise VertebraError(f"no such file or folder: {ct}")  # before loading the networks
    if networks is None:
        networks = load_networks(model, localizer, identifier, device=device,
                                 precision=precision)
    config = pipeline_config(networks, **settings)
    result, _ = label_file(ct, networks, config, out=out, backend=backend, nan=nan,
                           pictures=pictures)
    return result
