"""LoRA learning from corrections: peft adapters, their pools and files, the training
core, the estimated IoU of candidates and the ``Learner``."""
