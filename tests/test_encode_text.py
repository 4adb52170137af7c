"""The Ray encoding job writes the same text feature cache as in-process encoding, and resumes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from miracl_grid.data.text_features import ensure_text_features, load_text_features
from miracl_grid.grid.encode_text import ClusterNoteEncoder

NOTES = ["Admitted with chest pain and shortness of breath.", "", "Sepsis; started on vancomycin.",
         "Known COPD, intubated overnight, weaning from the ventilator today.", "   ",
         "Acute kidney injury on chronic kidney disease stage 3."] * 3
LABELS = ["Acute renal failure", "Septicemia"]

pytestmark = [pytest.mark.slow, pytest.mark.ci]     # starts a private local Ray (~30 s on a quiet machine)


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray
    ray.shutdown()


def test_cluster_encoding_equals_in_process_and_resumes(ray_local, tmp_path):
    local = ensure_text_features(tmp_path / "local", NOTES, label_names=LABELS, max_tokens=32, progress=False)
    scratch = tmp_path / "shards"
    encoder = ClusterNoteEncoder(scratch, shard_notes=4, use_gpu=False, progress=False)
    remote = ensure_text_features(tmp_path / "remote", NOTES, label_names=LABELS, max_tokens=32, progress=False,
                                  note_encoder=encoder)
    assert remote.key == local.key and not remote.reused
    a, b = (load_text_features(info.path.parent.parent, info.key) for info in (local, remote))
    np.testing.assert_array_equal(a.token_offsets, b.token_offsets)
    # padding is masked: other batch companions change values only by float rounding (float16 store)
    np.testing.assert_allclose(np.asarray(a.token_features, dtype=np.float32),
                               np.asarray(b.token_features, dtype=np.float32), atol=2e-2)
    np.testing.assert_array_equal(a.label_embeddings, b.label_embeddings)
    ignored = {"seconds", "created_utc", "encoder_source"}
    assert {k: v for k, v in a.meta.items() if k not in ignored} == {k: v for k, v in b.meta.items() if k not in ignored}
    shards = sorted(scratch.glob("shard_*.npz"))
    assert len(shards) == -(-len(NOTES) // 4)
    # resume: a rerun with the shards present encodes nothing again (files untouched) and agrees
    times = {p: p.stat().st_mtime_ns for p in shards}
    shards[0].unlink()                                      # one shard lost, e.g. interrupted
    again = ensure_text_features(tmp_path / "again", NOTES, label_names=LABELS, max_tokens=32, progress=False,
                                 note_encoder=encoder)
    assert all(p.stat().st_mtime_ns == t for p, t in times.items() if p != shards[0]) and shards[0].is_file()
    c = load_text_features(tmp_path / "again", again.key)
    np.testing.assert_array_equal(np.asarray(b.token_features), np.asarray(c.token_features))
    json.dumps(again.meta)
