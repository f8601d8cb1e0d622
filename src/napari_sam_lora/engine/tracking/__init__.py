"""SAM2 tracking: loading models, lazy frames, feature caches, propagation plans, the
``Session`` that keeps SAM2 equal to the annotation model, incremental re-propagation and
session files. Every SAM2-private call is in ``sam2_bridge``."""
