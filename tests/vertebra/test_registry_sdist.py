"""``benchmarks/registry_sdist.py``: a pinned source distribution fetched once, checked
against its digest, and unpacked member by member; offline, on an archive made here."""

import hashlib
import io
import tarfile

import pytest


@pytest.fixture
def fake(benchmark_script, tmp_path, monkeypatch):
    """(the module, a pinned Sdist of a small archive served by file:// URL, the cache)."""
    mod = benchmark_script("registry_sdist")
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("pkg-1.0/tests/ct.bin", b"\x01\x02" * 1000),
                           ("pkg-1.0/README", b"hello")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("pkg-1.0/tests/dir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    sdist = mod.Sdist("pkg", "1.0", archive.as_uri(), digest)
    monkeypatch.setitem(mod.SDISTS, "pkg", sdist)
    cache = tmp_path / "cache"
    monkeypatch.setenv("VERTEBRA_SDIST_CACHE", str(cache))
    return mod, sdist, cache


def test_a_member_is_fetched_once_and_unpacked(fake):
    mod, sdist, cache = fake
    assert sdist.root == "pkg-1.0" and sdist.filename == "pkg-1.0.tar.gz"
    path = mod.member("pkg", "tests/ct.bin")
    assert path == cache / "pkg-1.0" / "tests" / "ct.bin"
    assert path.read_bytes() == b"\x01\x02" * 1000
    assert (cache / "pkg-1.0.tar.gz").is_file()
    # the second call reads the cache: the served archive may be gone
    (cache.parent / "served" / "pkg-1.0.tar.gz").unlink()
    assert mod.member("pkg", "tests/ct.bin") == path
    assert mod.member("pkg", "README").read_bytes() == b"hello"
    assert not list(cache.rglob("*.part"))


def test_a_wrong_digest_or_member_is_refused_and_leaves_nothing(fake):
    mod, sdist, cache = fake
    mod.SDISTS["pkg"] = mod.Sdist("pkg", "1.0", sdist.url, "0" * 64)
    with pytest.raises(mod.SdistUnavailable, match="sha256"):
        mod.member("pkg", "tests/ct.bin")
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    mod.SDISTS["pkg"] = sdist
    with pytest.raises(mod.SdistUnavailable, match="holds no"):
        mod.member("pkg", "tests/missing.bin")
    with pytest.raises(mod.SdistUnavailable, match="not a file"):
        mod.member("pkg", "tests/dir")
    # a cached archive that does not match is refused, not used
    (cache / "pkg-1.0.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(mod.SdistUnavailable, match="delete it"):
        mod.member("pkg", "README")
    # an unreachable registry names the file to put in the cache by hand
    mod.SDISTS["pkg"] = mod.Sdist("pkg", "1.0", (cache / "gone.tar.gz").as_uri(), "0" * 64)
    (cache / "pkg-1.0.tar.gz").unlink()
    with pytest.raises(mod.SdistUnavailable, match="by hand"):
        mod.member("pkg", "README")
