"""The analyze stage (and the opt-in W&B report): one :class:`~absld.analyze.study.Study` is built from
the evaluations and handed to every renderer: the statistics (:mod:`.analysis`), the paper-style
table (:mod:`.tables`), the prose (:mod:`.words`, :mod:`.markdown`), the figures (:mod:`.plots`), the
DVC plot data and W&B (:mod:`.study`), and the W&B report (:mod:`.wandb_report`).

Kept free of imports, like every stage package."""
