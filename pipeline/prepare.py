"""``absld prepare``: the dataset as uint8 arrays, labels and a manifest under data/<dataset>/."""

from __future__ import annotations

import click

from absld import data
from absld.tracking import Tracker

from .common import LAYOUT, load, locked, params_option, user_errors


@click.command()
@params_option
@user_errors
@locked(lambda **_: "prepare")
def prepare(params_path: str) -> None:
    """Read the dataset named by data.dataset and write data/<dataset>/.

    Sources, in order: data.source_dir (an existing directory, e.g. the Debian package's
    /usr/share/datasets/fashion-mnist), then data.root, then a download when data.download is
    true. CIFAR archives are md5-checked against torchvision's sums (data.verify_md5), as is
    tiny-imagenet-200.zip (read in place; or its extracted folder) against the official one; the
    test split of Tiny-ImageNet is its official val split (its test split has no labels). A stratified
    validation split of data.val_per_class images per class is held out from training. Nothing is
    written unless every step succeeds; no other dataset is ever substituted. data.dataset:
    synthetic generates a small CIFAR-shaped dataset (data.synthetic) for pipeline checks.
    """
    params = load(params_path)
    cfg = params.data
    out = LAYOUT.data_dir(cfg.dataset)
    manifest = data.prepare(
        cfg.dataset, out, root=cfg.root, source_dir=cfg.source_dir, download=cfg.download,
        verify_md5=cfg.verify_md5, val_per_class=cfg.val_per_class,
        train_per_class=cfg.train_per_class, split_seed=cfg.split_seed,
        synthetic=(cfg.synthetic.train_per_class, cfg.synthetic.test_per_class, cfg.synthetic.seed),
    )
    sizes = manifest["sizes"]
    with Tracker(params, "prepare", config=params.model_dump(mode="json", include={"profile", "data"}),
                 echo=click.echo) as tracker:
        tracker.summary({**{f"size/{k}": v for k, v in sizes.items()}, "source": manifest["source"],
                         "sha256": manifest["sha256"]})
        tracker.log_artifact(f"data-{cfg.dataset}", "dataset", [out / "manifest.json"], metadata={"sizes": sizes})
    click.echo(f"prepared {cfg.dataset} from {manifest['source']} -> {out}: "
               f"{sizes['train']} train / {sizes['val']} val / {sizes['test']} test images")
