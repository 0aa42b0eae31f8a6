"""Trust the data and the probabilities (issue 17): pure functions on numpy arrays.

* :mod:`automl.trust.labels`: out-of-sample probabilities from k-fold heads on cached
  activations, and every image ranked by cleanlab's label-quality score;
* :mod:`automl.trust.leakage`: exact duplicates by content hash and near-duplicates across
  splits by cosine similarity, in chunks (no n x n matrix);
* :mod:`automl.trust.calibration`: temperature scaling, NLL, expected calibration error and
  reliability-diagram bins;
* :mod:`automl.trust.split`: a grouped, stratified carve (identical images in one split).

Nothing here imports TensorFlow or Keras; import the modules themselves (this package imports
none of them, so ``automl.trust.split`` does not pull in scikit-learn or cleanlab).
"""
