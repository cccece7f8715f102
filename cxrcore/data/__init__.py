"""Data: pixels (normalisation, the one resize, pixel rules), formats (PNG, JPEG, sizes, limits), dicom,
io (decoding and the model's view of an image), dataset layouts and the cached index (index), label schemes
and patient-grouped splits (splits), the data audit (audit) and the synthetic demo set (demo). No
TensorFlow here."""
