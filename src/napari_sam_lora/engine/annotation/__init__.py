"""The annotation: the annotation model with its undo/redo history (``model``), who made
each mask (``state``), prompts and corrections — numpy only, no SAM2."""
