"""Another app loads the export with nothing from this repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf

OTHER_APP = textwrap.dedent("""
    import json, sys
    import tensorflow as tf

    loaded = tf.saved_model.load(sys.argv[1])
    nxt = loaded.signatures["serving_default"](text=tf.constant(["The quick", ""]))
    gen = loaded.signatures["generate"](
        text=tf.constant(["The quick", "Ωμέγα"]), max_tokens=tf.constant([25, 10], tf.int32),
        temperature=tf.constant([0.8, 1.0]), seed=tf.constant([1, 2], tf.int64))
    project_modules = [m for m in sys.modules if m.split(".")[0] in ("model", "pipelines", "serving")]
    print(json.dumps({
        "probability_sums": nxt["probabilities"].numpy().sum(axis=1).tolist(),
        "top_token": nxt["top_k_tokens"].numpy()[0, 0].decode("utf-8"),
        "generated": [g.decode("utf-8") for g in gen["generated"].numpy()],
        "project_modules": project_modules,
    }))
""")


def test_a_fresh_python_process_with_only_tensorflow_can_use_both_signatures(exported_lstm, loaded_lstm, tmp_path):
    script = tmp_path / "other_app.py"
    script.write_text(OTHER_APP)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(script), str(exported_lstm[1])], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["project_modules"] == []
    np.testing.assert_allclose(answer["probability_sums"], 1.0, rtol=1e-5)
    assert [len(text) for text in answer["generated"]] == [25, 10]
    # The other process computes exactly what this one does.
    here = loaded_lstm.signatures["generate"](
        text=tf.constant(["The quick"]), max_tokens=tf.constant([25], tf.int32),
        temperature=tf.constant([0.8]), seed=tf.constant([1], tf.int64))["generated"].numpy()[0]
    assert answer["generated"][0] == here.decode("utf-8")


def test_keras_tfsmlayer_loads_the_export(exported_lstm):
    import keras

    layer = keras.layers.TFSMLayer(str(exported_lstm[1]), call_endpoint="serving_default")
    out = layer(tf.constant(["The quick", "A lazy"]))
    assert out["probabilities"].shape[0] == 2
    np.testing.assert_allclose(np.asarray(out["probabilities"]).sum(axis=1), 1.0, rtol=1e-5)
