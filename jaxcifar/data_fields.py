"""The `data` block of a config: where a run's images and labels come from, read by
jaxcifar/data.py and declared apart from it so that a config is read without the data
pipeline or JAX (schema.py says why)."""

from __future__ import annotations

from typing import Any

from jaxcifar import schema


def _label_seed(value: Any) -> str:
    return "" if value is None or (isinstance(value, int) and value >= 0) else "must be None or a whole number >= 0"


FIELDS = schema.block("data", (
    schema.Field("dataset", "cifar10", "TFDS image-classification dataset (cifar10, cifar100, svhn_cropped, ...); "
                                       "the class count and names come from its info"),
    schema.Field("image_folder", "", "DIR of your own images, DIR/<split>/<class>/*.jpg|png (class names = folder "
                                     "names), and unlabelled images in DIR/unlabeled/ (any files); replaces "
                                     "data.dataset and needs no --data_dir; '' = off"),
    schema.Field("image_size", 32, "side of the square images the model takes; other sizes are resized to it "
                                   "(bilinear, antialiased: on the device for a TFDS dataset, on the host for image "
                                   "files)", check=schema.positive_int),
    schema.Field("train_split", "train", "split to train on (a TFDS split, or a subfolder of data.image_folder)"),
    schema.Field("eval_split", "test", "the test split, evaluated after every epoch for monitoring and at the end for "
                                       "the report, never for selection; `test` holds the 1,000 exact test images "
                                       "here; '' = none"),
    schema.Field("extra_eval_splits", (), "splits evaluated once at the end, e.g. ('test_jpeg',) for robustness"),
    schema.Field("classes", (), "a subset of class ids, relabelled 0..k-1 in this order; () = all"),
    schema.Field("examples_per_class", 0, "deterministic label budget: the first N images of each class; 0 = all. "
                                          "The rest of the train split, without labels, is the unlabelled stream "
                                          "of the methods that read one"),
    schema.Field("label_seed", None, "with examples_per_class: None = the first N images of each class in split "
                                     "order; an integer = a random draw of N per class with that seed",
                 check=_label_seed),
    schema.Field("labels_csv", "", "a filled-in CSV of `python -m jaxcifar.select_labels` (columns index, label): "
                                   "its labelled rows are the label budget, every other train image joins the "
                                   "unlabelled stream; '' = off"),
    schema.Field("validation_fraction", 0.0, "> 0: hold this fraction of each class out of train_split (stratified, "
                                             "fixed seed, the same for every run; out of the label budget when "
                                             "there is one) as the validation split, on which the best checkpoint "
                                             "and early stopping are chosen; 0 = no selection: the run's result is "
                                             "its final weights", check=schema.in_range(0, 1, high_open=True)),
    schema.Field("device_resident", False, "keep the uint8 train split on the device and gather batches there "
                                           "(the `fast` recipe's path; 150 MB per device)"),
    schema.Field("scan_epoch", False, "with device_resident: run each epoch as one lax.scan (progress and signals "
                                      "are handled between epochs)"),
))
