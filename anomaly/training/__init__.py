"""Training the detector: the training loop and calibration (`train`), and multi-process training (`distributed`)."""
