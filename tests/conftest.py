"""Test settings: quiet TensorFlow, no network probes, caches in a per-session folder."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["AUTOML_OFFLINE"] = "1"  # tests never try a download, with or without internet
# converted weights are cached once per test session, never in the user's ~/.keras
os.environ.setdefault("AUTOML_HOME", tempfile.mkdtemp(prefix="automl-test-home-"))
