"""absld-repro's Hydra plugin: DVC imports it before composing params.yaml for `dvc exp run -S`.

It only registers the resolver that validates the composition (:mod:`absld.params.resolver`), so
that a bad value stops before DVC writes params.yaml or touches any output.
"""

from absld.params.resolver import register

register()
