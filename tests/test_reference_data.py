"""The copies of llama.cpp's reference files in tests/data equal the originals, and the large ones match
their recorded SHA-256 (wherever the reference folder is present)."""

from __future__ import annotations

import hashlib

import pytest

from conftest import LARGE_REF, REF, REF_COPIES


def _need_ref_folder():
    if not REF.is_dir():
        pytest.skip(f"reference folder {REF} is missing: nothing to compare the copies with")


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_copies_equal_the_reference_folder():
    _need_ref_folder()
    copies = _files(REF_COPIES)
    assert copies, "tests/data/ref is empty"
    for rel in copies:
        assert (REF_COPIES / rel).read_bytes() == (REF / rel).read_bytes(), f"tests/data/ref/{rel} differs from {REF / rel}"


@pytest.mark.parametrize("name", sorted(LARGE_REF))
def test_large_files_have_recorded_digest(name):
    _need_ref_folder()
    data = (REF / name).read_bytes()
    assert len(data) == LARGE_REF[name]["bytes"]
    assert hashlib.sha256(data).hexdigest() == LARGE_REF[name]["sha256"]
