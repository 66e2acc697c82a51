"""The paper's table across GPUs and Slurm, on DVC's own terms: :mod:`.plan` reads the stale
stages of ``dvc.yaml`` and orders them, :mod:`.runner` runs one as ``dvc repro --single-item`` (DVC
writes ``dvc.lock``) and retries only DVC's repository lock, :mod:`.local` spreads the items over a
pool of GPU slots, :mod:`.slurm` submits them as Slurm jobs through submitit. No DVC stage runs
this code, so editing it stales nothing."""
