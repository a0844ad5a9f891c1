"""The tune engine, one module per step (``vipamin_cli.tune.tune`` runs them in this order).

1. :mod:`.request` checks what was asked before any work and holds ``--out``'s lock;
2. :mod:`.inputs` reads the embeddings, loads the backbone and computes (or reads) the initial prompts;
3. :mod:`.plan` lists the candidates (init configuration x lr x weight decay x seed) and the
   grid-batch groups they train in (under torchrun: this rank's share);
4. :mod:`.resume` finds where an interrupted run stopped (``<out>.partial.safetensors``);
5. :mod:`.stage` trains a stage's groups (:func:`~.stage.sweep_runs`: the sweep), saving resume state
   after every epoch and showing progress;
6. :mod:`.selection` picks the configuration on validation;
7. :mod:`.final` retrains it on the final split once per seed (or keeps the selected sweep runs);
8. :mod:`.checkpoint` writes the checkpoint and ``<out>.sweep.json``, and reads runs back.

A stage is a list of candidates and the groups they train in, so it can train any subset of the
plan's candidates (:func:`.plan.batch_groups` forms groups from any list of candidate indices).
"""
