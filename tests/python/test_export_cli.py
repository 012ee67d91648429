"""The export tool refuses unusable input with a clear error: `compile` in one line, no
traceback; `export` for an image processor whose resampling filter the server does not
reproduce. Needs the package installed (`make venv`: pip install -e python/), no server."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def compile_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "siglip_export", "compile", *args],
                          capture_output=True, text=True, timeout=120)


def assert_clear_error(out: subprocess.CompletedProcess, needle: str) -> None:
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert "error: " in out.stderr and needle in out.stderr, out.stderr


def test_compile_needs_a_model_directory(tmp_path: Path):
    assert_clear_error(compile_cli("--model-dir", str(tmp_path), "--device", "cpu"), "has no manifest.json")


def test_compile_needs_the_dtype_exported(tmp_path: Path, manifest: dict):
    only_fp32 = {**manifest, "towers": {"float32": manifest["towers"]["float32"]}}
    (tmp_path / "manifest.json").write_text(json.dumps(only_fp32))
    out = compile_cli("--model-dir", str(tmp_path), "--device", "cpu", "--dtype", "bfloat16")
    assert_clear_error(out, "has no bfloat16 towers (it has float32); export that dtype first")


def test_export_reads_the_resampling_filter_and_refuses_unserved_ones(tmp_path: Path, manifest: dict):
    from siglip_export.export import ExportError, image_settings  # torch: imported by this test only

    config = json.loads((Path(manifest["source"]["checkpoint"]) / "preprocessor_config.json").read_text())
    for code, name in ((2, "bilinear"), (3, "bicubic")):
        (tmp_path / "preprocessor_config.json").write_text(json.dumps({**config, "resample": code}))
        assert image_settings(tmp_path)["resample"] == name
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**config, "resample": 1}))
    with pytest.raises(ExportError, match="resample 'lanczos' is not supported"):
        image_settings(tmp_path)


def test_faulty_needs_a_model_directory(tmp_path: Path):
    out = subprocess.run([sys.executable, "-m", "siglip_export", "faulty", "--model-dir", str(tmp_path),
                          "--out", str(tmp_path / "faulty")], capture_output=True, text=True, timeout=120)
    assert_clear_error(out, "has no manifest.json")
    assert not (tmp_path / "faulty").exists()
