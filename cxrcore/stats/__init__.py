"""Numbers from arrays that more than one stage needs: bootstrap intervals (the data audit and evaluation)
and the feature statistics of the unlike-the-training-data check (fitted at the end of training, kept by
the run, read by prediction). Leaves: numpy, scipy and scikit-learn only, nothing else of ``cxrcore``."""
