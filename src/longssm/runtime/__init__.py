"""Where a computation runs: the device and autocast (``device.py``), the process group (``distributed.py``), and the
one chunked stateful feed every evaluator, generation and calibration uses (``feed.py``)."""
