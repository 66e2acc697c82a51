"""The evaluate stage: the cascade of attacks (:mod:`.cascade`), its resumable progress
(:mod:`.progress`), the ``records.npz`` contract (:mod:`.records`), the AutoAttack adapter
(:mod:`.autoattack`), the evaluation figure (:mod:`.plots`) and the stage itself (:mod:`.run`).

Kept free of imports: the analysis reads :mod:`.records` without depending on the attacks."""
