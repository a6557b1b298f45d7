"""The scripts in examples/ run end to end at small sizes on the CPU (the GPU benchmark
times only where a GPU is present and otherwise says so and exits cleanly)."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from drrkit.render import cuda_available

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script: str, *args, cwd: Path, env: dict | None = None):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=environment,
                          check=False)


def test_every_example_has_a_test():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == [
        "gpu_benchmark.py", "label_ct.py", "projection_study.py"]


def test_projection_study(tmp_path):
    res = run("projection_study.py", "--views", 4, "--size", 64, "--phantom-size", 48,
              "--points", 5, "--backend", "cpu", "--out", "study.png", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    exact = next(line for line in res.stdout.splitlines() if "exact pixels" in line)
    assert float(exact.split("max error ")[1].split()[0]) < 1e-6  # mm: exact rays meet
    picture = Image.open(tmp_path / "study.png")
    assert picture.mode == "RGB" and picture.size == (4 * 256, 256)
    res = run("projection_study.py", tmp_path / "missing.nii.gz", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("error: no such file")


@pytest.mark.skipif(cuda_available(), reason="a GPU is present (the timed run is tested)")
def test_gpu_benchmark_without_a_gpu_says_so(tmp_path):
    res = run("gpu_benchmark.py", cwd=tmp_path)
    assert res.returncode == 0 and "no CUDA GPU" in res.stdout, res.stderr


@pytest.mark.cuda
def test_gpu_benchmark_small_scene(tmp_path):
    res = run("gpu_benchmark.py", "--volume", 64, "--views", 2, "--size", 64, "--repeats", 2,
              "--cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "ct64-64" in res.stdout and "texture" in res.stdout and "cpu" in res.stdout


def example_main(script: str):
    """The ``main(argv)`` of an example, loaded in this process (its heavy imports, torch and
    timm, are then shared with the test suite's)."""
    return runpy.run_path(str(EXAMPLES / script), run_name="example")["main"]


def test_label_ct(tiny_networks, tmp_path, capsys):
    from vertebra.data.phantom import make_spine_phantom

    ct = tmp_path / "case_ct.nii.gz"
    make_spine_phantom(0, size="small", metal=False).ct.save(ct)
    main = example_main("label_ct.py")
    out = tmp_path / "labels"
    with pytest.warns(UserWarning, match="no spine found"):  # random networks
        code = main([str(ct), "--model", str(tiny_networks[1]), "--out", str(out),
                     "--device", "cpu", "--backend", "cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "vertebrae" in printed.out and "case_views.png" in printed.out
    written = {p.name for p in out.iterdir()}
    assert {"case_ctd.json", "case.mrk.json", "case_seg-spheres.nii.gz", "case_sagittal.png",
            "case_coronal.png"} <= written
    # without networks packaged or named: one error line, exit 2 (here in a fresh process)
    res = run("label_ct.py", ct, cwd=tmp_path,
              env={"VERTEBRA_WEIGHTS": str(tmp_path / "none.safetensors")})
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "VERTEBRA_WEIGHTS" in res.stderr
