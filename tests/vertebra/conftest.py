"""Fixtures shared by the vertebra tests."""

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one intra-op thread for a module's tests, restored afterwards.

    Tiny models gain nothing from intra-op threads, and lose 10x on a busy 2-core box.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def benchmark_script():
    """``load(name)``: ``benchmarks/NAME.py`` as a module.

    The scripts are not a package: each is loaded from its file, registered in
    ``sys.modules`` as ``benchmarks_NAME`` (dataclasses look their module up by name), and
    their folder is appended to ``sys.path`` (they import ``_common`` and each other; at
    the end, so no script shadows an installed module).
    """
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.append(str(folder))

    def load(name: str):
        key = f"benchmarks_{name}"
        if key not in sys.modules:
            spec = importlib.util.spec_from_file_location(key, folder / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[key]
                raise
        return sys.modules[key]
    return load
