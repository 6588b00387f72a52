"""Input pipelines: random-access sources -> Grain -> numpy batches."""

from dnas.data.pipeline import DataError, DatasetInfo, get_dataset, make_batches, search_splits
