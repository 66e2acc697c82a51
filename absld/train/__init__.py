"""The training stages, ``teacher`` and ``distill``: the one training loop (:mod:`.loop`), the teacher's
training or import (:mod:`.teacher`), a student's distillation (:mod:`.distill`), checkpoint selection
and weight averaging (:mod:`.selection`), and the training figures (:mod:`.plots`).

Kept free of imports, so that importing one module does not make a stage depend on the others."""
