"""Data: image decoding (io), dataset layouts and the cached index (index), label schemes and
patient-grouped splits (splits), and the synthetic demo set (demo). No TensorFlow here."""
