"""python -m psta_jax.export: the jax.export artifact and the SavedModel, each loaded in a
process that cannot import psta_jax (nor, for TensorFlow, jax), embed clips as the model does."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from psta_jax import export
from psta_jax.input import pipeline, preprocess
from psta_jax.serving import embedder, export_artifacts, tracklets
from psta_jax.training import steps, trained_model
from tests.helpers.tolerances import assert_close_to_scale

pytestmark = [
    pytest.mark.xdist_group("serving"),
    pytest.mark.slow,  # trains the tiny run first (tests/serving/conftest.py)
    pytest.mark.filterwarnings("ignore:JAX is already running"),
]

BATCH_SIZES = (1, 3)
LOAD_JAX = """
import jax
exported = jax.export.deserialize(bytearray(open(ARTIFACT, "rb").read()))
result = {"platforms": list(exported.platforms),
          "outputs": [exported.call(clips[:n]).tolist() for n in BATCH_SIZES]}
"""
LOAD_TF = """
sys.modules["jax"] = None  # TensorFlow alone
import tensorflow as tf
model = tf.saved_model.load(ARTIFACT)
serve = model.signatures["serving_default"]
result = {"inputs": {k: v.shape.as_list() for k, v in serve.structured_input_signature[1].items()},
          "outputs": [serve(clips=tf.constant(clips[:n]))["embeddings"].numpy().tolist()
                      for n in BATCH_SIZES]}
"""


def _run_without_psta_jax(loader: str, artifact, clips_path, tmp_path) -> dict:
    script = textwrap.dedent("""
        import json, sys
        sys.modules["psta_jax"] = None  # any import of psta_jax now fails
        import numpy as np
        ARTIFACT, BATCH_SIZES = {artifact!r}, {batches!r}
        clips = np.load({clips!r})
    """).format(artifact=str(artifact), batches=BATCH_SIZES, clips=str(clips_path))
    script += textwrap.dedent(loader) + "\nprint('RESULT' + json.dumps(result))\n"
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(x for x in completed.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    export.main(["--checkpoint", str(trained_run), "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def reference(trained_run, tmp_path_factory):
    """Real clips of the synthetic query split (uint8, as the eval pipeline yields them) and
    their embeddings from the model as embed and evaluation run it."""
    model = trained_model.load_trained_model(trained_run)
    source = tracklets.split_source(embedder.split_dataset(model, "mars", None), "query")
    store = tracklets.read_split(source)
    clips = next(iter(pipeline.EvalBatches(store, model.eval_input, batch_size=4)))["clips"][:3]
    embed_fn = steps.compile_embed(
        model.graphs, model.mesh, preprocess.clip_preparation(model.eval_input)
    )
    expected = {
        n: np.asarray(embed_fn(model.params, model.model_state, clips[:n])) for n in BATCH_SIZES
    }
    path = tmp_path_factory.mktemp("clips") / "clips.npy"
    np.save(path, clips)
    return model, path, expected


def test_jax_export_artifact_runs_without_psta_jax(exported, reference, tmp_path):
    model, clips_path, expected = reference
    result = _run_without_psta_jax(
        LOAD_JAX, exported / export_artifacts.EXPORTED_FILE, clips_path, tmp_path
    )
    assert result["platforms"] == ["cpu", "cuda", "tpu"]
    for n, output in zip(BATCH_SIZES, result["outputs"], strict=True):
        assert_close_to_scale(output, expected[n])
    # The comparison means something: the clips' embeddings differ far more than that.
    assert np.abs(expected[3][0] - expected[3][1]).max() > 1e-3 * np.abs(expected[3]).max()
    metadata = json.loads((exported / export_artifacts.METADATA_FILE).read_text())
    assert metadata["input"]["shape"] == [None, *model.clip_shape]
    assert metadata["output"]["shape"] == [None, model.feature_dim]
    assert metadata["checkpoint"]["step"] == model.identity.step


def test_saved_model_runs_with_tensorflow_alone(exported, reference, tmp_path):
    model, clips_path, expected = reference
    result = _run_without_psta_jax(
        LOAD_TF, exported / export_artifacts.SAVED_MODEL_DIR, clips_path, tmp_path
    )
    assert result["inputs"] == {"clips": [None, *model.clip_shape]}
    for n, output in zip(BATCH_SIZES, result["outputs"], strict=True):
        assert_close_to_scale(output, expected[n])


def test_bad_export_options_get_one_message(trained_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main(
            ["--checkpoint", str(trained_run), "--out", str(tmp_path), "--platforms", "cpu,rocm"]
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "platforms must be a non-empty subset of ('cpu', 'cuda', 'tpu')" in err
    assert "Traceback" not in err
