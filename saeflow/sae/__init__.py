"""SAE training for any model (rule ``train_sae``): sae-lens's own runner and training configs
(``standard``, ``topk``, ``batchtopk``, ``jumprelu``), our own loop only for transcoders (sae-lens
has no transcoder trainer), over a corpus at the positions a study analyses, checkpointed so a
killed job resumes.

Modules: corpus (reading ``sae.corpus``), data (what the runner reads: token windows, packed
text, or the activations at chosen positions), checkpoints (where a job keeps its progress),
train (the runner, progress, the stage), transcoder (our loop).
"""
