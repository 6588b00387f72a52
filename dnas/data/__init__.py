"""Input pipelines: random-access sources (embedded digits, TFDS) -> Grain -> numpy batches."""

from dnas.data.pipeline import (DATASETS, DataError, DatasetInfo, get_dataset, make_augment,
                                make_batches, search_splits)
