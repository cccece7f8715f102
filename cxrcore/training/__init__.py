"""Training: the backbone registry (backbones, plain data), the Keras layers and flat models
(layers, model), the tf.data pipeline (pipeline), devices and strategies (devices), training
callbacks (callbacks) and two-stage training into a run directory (train)."""
