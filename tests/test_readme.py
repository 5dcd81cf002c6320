"""The README's Python examples run as written."""

import re
import runpy
import warnings
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 2, "the README lost its Python examples"
    return blocks


def _run_block(index: int | str, folder: Path) -> dict:
    """Run the README's Python block ``index`` (or the one containing that text) as a script in ``folder``; returns its globals."""
    blocks = _blocks()
    if isinstance(index, str):
        index = next(i for i, b in enumerate(blocks) if index in b)
    script = folder / f"readme_block_{index}.py"
    script.write_text(blocks[index], encoding="utf-8")
    return runpy.run_path(str(script), run_name="__main__")


def test_readme_generation_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CUDA-to-CPU fallback warning on machines without CUDA
        namespace = _run_block(0, tmp_path)
    assert namespace["frames"].shape == (16, 3, 256, 256)
    assert namespace["video"] == "forward.mp4" and (tmp_path / "forward.mp4").stat().st_size > 1000
    rec = namespace["reconstruction"]
    assert rec["mesh"].faces.shape[0] > 0 and rec["quality_metrics"]["coverage"] > 0.5


def test_readme_engine_core_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = _run_block("again = load_trajectory", tmp_path)
    assert len(namespace["again"]) == 16 and namespace["renders"].rgb.shape == (16, 3, 256, 256)
    assert (tmp_path / "memory.safetensors").is_file() and (tmp_path / "trajectory.json").is_file()


def test_readme_panorama_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = _run_block("render_panorama(model", tmp_path)
    assert namespace["frames"].shape == (9, 3, 128, 128)
    assert namespace["explored"].shape == (3, 512, 1024) and bool(namespace["seen"].float().mean() > 0.95)
